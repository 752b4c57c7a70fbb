// Reload each [data-live] region from its page with ?partial=1 every refresh interval,
// so job states, studies and the quarantine update without a reload. A region is not
// replaced while the pointer is over a form in it (a click must not hit a moved button).
(function () {
  const interval = Number(document.body.dataset.refreshMs || 0);
  if (!interval) return;
  async function refresh(region) {
    if (region.querySelector("form:hover, select:focus, input:focus")) return;
    const url = new URL(region.dataset.live, window.location.href);
    url.searchParams.set("partial", "1");
    try {
      const response = await fetch(url, { credentials: "same-origin", headers: { "X-Partial": "1" } });
      if (response.redirected || response.status === 401) { window.location.reload(); return; }
      if (response.ok) { region.innerHTML = await response.text(); region.dataset.updated = Date.now(); }
    } catch (error) { /* the node may be restarting: try again next tick */ }
  }
  setInterval(() => document.querySelectorAll("[data-live]").forEach(refresh), interval);
})();
