// Drives OHIF (served by tests/viewer/server.py) in Debian's headless Chromium, as a user would:
// open the study, double-click the SEG, SR, SC and PDF thumbnails, answer OHIF's prompts, and
// report what the page shows. Run by tests/viewer/test_ohif_viewer.py:
//
//   node driver.cjs PLAN.json RESULT.json
//
// PLAN: {playwrightCore, chromium, url, studyUid, artefacts, timeoutMs,
//        seg: {seriesUid, sourceSeriesUid, sopInstanceUid, worldPoints: [[x,y,z], ...]},
//        sr: {seriesUid}, sc: {seriesUid}, pdf: {seriesUid}}
// RESULT: {console, pageErrors, failedRequests, blocked, steps: {open, seg, sr, sc, pdf}}; a step
// that failed has {error}. Nothing is asserted here: the test judges RESULT and the images.
'use strict';

const fs = require('fs');
const path = require('path');

const plan = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
const { chromium } = require(plan.playwrightCore);

// ../shared/stack-notes.md "Viewer": what headless Debian Chromium needs to render OHIF.
const CHROMIUM_ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
  '--disable-component-update', '--disable-sync', '--no-first-run'];
const CHROMA = 40; // max-min over RGB above which a canvas pixel is coloured (MR renders grey)

const result = { console: [], pageErrors: [], failedRequests: [], blocked: [], steps: {}, timings: {} };
const started = Date.now();
const elapsed = () => (Date.now() - started) / 1000;
const shot = (page, name) => page.screenshot({ path: path.join(plan.artefacts, name) }).then(() => name);

async function step(name, page, body) {
  const t0 = Date.now();
  try {
    result.steps[name] = await body();
  } catch (err) {
    result.steps[name] = { error: String(err && err.stack || err).slice(0, 2000) };
    try {
      result.steps[name].screenshot = await shot(page, `${name}-failed.png`);
    } catch (_) { /* the page is gone */ }
  }
  result.timings[name] = (Date.now() - t0) / 1000;
}

// --- in-page helpers (run with page.evaluate) --------------------------------------------------

function displaySetUid(seriesUid) {
  const sets = window.services.displaySetService.getActiveDisplaySets();
  const match = sets.find(set => set.SeriesInstanceUID === seriesUid);
  return match ? match.displaySetInstanceUID : null;
}

function viewportState() {
  const { viewportGridService, cornerstoneViewportService } = window.services;
  const { activeViewportId, viewports } = viewportGridService.getState();
  const grid = viewports.get ? viewports.get(activeViewportId) : viewports[activeViewportId];
  const vp = cornerstoneViewportService.getCornerstoneViewport(activeViewportId);
  const state = { viewportId: activeViewportId, displaySetUids: grid ? grid.displaySetInstanceUIDs : [] };
  if (vp && vp.getCurrentImageId) {
    const imageId = vp.getCurrentImageId();
    const series = imageId && window.cornerstone.metaData.get('generalSeriesModule', imageId);
    state.type = vp.type;
    state.imageIndex = vp.getCurrentImageIdIndex();
    state.imageCount = vp.getImageIds().length;
    state.seriesUid = series ? series.seriesInstanceUID : null;
    state.hasImage = Boolean(imageId && vp.getImageData && vp.getImageData());
  }
  return state;
}

function canvasStats(chroma) {
  const { viewportGridService, cornerstoneViewportService } = window.services;
  const vp = cornerstoneViewportService.getCornerstoneViewport(viewportGridService.getState().activeViewportId);
  const canvas = vp.canvas;
  const { data } = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height);
  let coloured = 0;
  let lit = 0;
  for (let i = 0; i < data.length; i += 4) {
    const hi = Math.max(data[i], data[i + 1], data[i + 2]);
    const lo = Math.min(data[i], data[i + 1], data[i + 2]);
    if (hi - lo > chroma) coloured += 1;
    if (hi > 20) lit += 1;
  }
  return { width: canvas.width, height: canvas.height, cssWidth: canvas.clientWidth,
    cssHeight: canvas.clientHeight, coloured, lit, pixels: canvas.width * canvas.height };
}

// --- page actions ------------------------------------------------------------------------------

async function openThumbnail(page, seriesUid) {
  const uid = await page.evaluate(displaySetUid, seriesUid);
  if (!uid) throw new Error(`no display set for series ${seriesUid}`);
  await page.locator(`[id="thumbnail-${uid}"]`).dblclick();
  await page.waitForFunction(
    want => { try { return window.__viewportState().displaySetUids.includes(want); } catch (_) { return false; } },
    uid, { timeout: plan.timeoutMs });
  return uid;
}

// OHIF asks in a bar over the viewport ("Do you want to open this Segmentation?", "... track
// measurements ...?"): answer `answer` to one if it shows within waitMs, and say what it asked.
async function answerPrompt(page, answer, waitMs) {
  const button = page.getByRole('button', { name: answer, exact: true });
  try {
    await button.first().waitFor({ state: 'visible', timeout: waitMs });
  } catch (_) {
    return null;
  }
  const asked = await page.evaluate(() => {
    const bars = Array.from(document.querySelectorAll('[data-cy="viewport-pane"] *'))
      .filter(e => e.querySelector && e.querySelector('button') && /\?/.test(e.innerText || ''));
    const smallest = bars.sort((a, b) => a.innerText.length - b.innerText.length)[0];
    return smallest ? smallest.innerText.split('\n')[0] : null;
  });
  await button.first().click();
  return asked;
}

async function waitForCanvas(page, predicate, arg) {
  await page.waitForFunction(predicate, arg, { timeout: plan.timeoutMs, polling: 200 });
}

async function saveCanvas(page, name) {
  const dataUrl = await page.evaluate(() => {
    const { viewportGridService, cornerstoneViewportService } = window.services;
    return cornerstoneViewportService.getCornerstoneViewport(viewportGridService.getState().activeViewportId)
      .canvas.toDataURL('image/png');
  });
  fs.writeFileSync(path.join(plan.artefacts, name), Buffer.from(dataUrl.split(',')[1], 'base64'));
  return name;
}

// Poll until the coloured-pixel count is the same on three reads 250 ms apart (rendering done).
async function settledStats(page) {
  let last = null;
  let same = 0;
  for (let i = 0; i < 80 && same < 2; i += 1) {
    await page.waitForTimeout(250);
    const stats = await page.evaluate(canvasStats, CHROMA);
    same = last && last.coloured === stats.coloured && last.lit === stats.lit ? same + 1 : 0;
    last = stats;
  }
  return last;
}

async function run() {
  fs.mkdirSync(plan.artefacts, { recursive: true });
  const origin = new URL(plan.url).origin;
  const browser = await chromium.launch({ executablePath: plan.chromium, headless: true, args: CHROMIUM_ARGS });
  try {
    const context = await browser.newContext({ viewport: { width: 1600, height: 1000 }, deviceScaleFactor: 1 });
    // A returning user: OHIF's first-visit onboarding tour is not what is tested.
    // (Chromium's PDF viewer frame shares the origin but has no localStorage.)
    await context.addInitScript(allowed => {
      if (location.origin === allowed && window.localStorage) {
        window.localStorage.setItem('shownTours', JSON.stringify(['basicViewerTour']));
      }
    }, origin);
    // Nothing leaves the machine: any request for another web origin is refused and listed.
    await context.route(url => /^(https?|wss?):$/.test(url.protocol) && url.origin !== origin, route => {
      result.blocked.push(route.request().url().slice(0, 200));
      return route.abort();
    });
    const page = await context.newPage();
    page.on('console', msg => {
      if (msg.type() === 'error' || msg.type() === 'warning') {
        const where = msg.location() || {};
        result.console.push({ type: msg.type(), text: msg.text().slice(0, 1000), url: (where.url || '').slice(0, 200),
          at: elapsed() });
      }
    });
    page.on('pageerror', err => result.pageErrors.push({ text: String(err && err.stack || err).slice(0, 1000), at: elapsed() }));
    page.on('requestfailed', req => result.failedRequests.push(
      { url: req.url().slice(0, 200), error: (req.failure() || {}).errorText, at: elapsed() }));
    page.on('response', resp => {
      if (resp.status() >= 400) result.failedRequests.push({ url: resp.url().slice(0, 200), status: resp.status(), at: elapsed() });
    });

    await step('open', page, async () => {
      await page.goto(`${plan.url}/viewer?StudyInstanceUIDs=${plan.studyUid}`);
      const wanted = [plan.seg.sourceSeriesUid, plan.seg.seriesUid, plan.sr.seriesUid, plan.sc.seriesUid, plan.pdf.seriesUid];
      await page.waitForFunction(uids => {
        if (!window.services || !window.cornerstone) return false;
        const have = new Set(window.services.displaySetService.getActiveDisplaySets().map(s => s.SeriesInstanceUID));
        return uids.every(uid => have.has(uid));
      }, wanted, { timeout: plan.timeoutMs });
      await page.evaluate(`window.__viewportState = ${viewportState.toString()}`);
      await waitForCanvas(page, () => { try { return window.__viewportState().hasImage; } catch (_) { return false; } });
      const displaySets = await page.evaluate(() => window.services.displaySetService.getActiveDisplaySets().map(
        s => ({ seriesUid: s.SeriesInstanceUID, modality: s.Modality, handler: s.SOPClassHandlerId })));
      return { displaySets, viewport: await page.evaluate(() => window.__viewportState()), screenshot: await shot(page, '01-study.png') };
    });
    if (result.steps.open.error) return;

    await step('seg', page, async () => {
      await openThumbnail(page, plan.seg.seriesUid);
      const prompt = await answerPrompt(page, 'Yes', 20000);
      await page.waitForFunction(() => {
        const { segmentationService, viewportGridService } = window.services;
        const viewportId = viewportGridService.getState().activeViewportId;
        return segmentationService.getSegmentationRepresentations(viewportId).length > 0;
      }, null, { timeout: plan.timeoutMs });
      // The slice the test chose (largest tumour area), found by its SOP Instance UID.
      const index = await page.evaluate(async sop => {
        const { viewportGridService, cornerstoneViewportService } = window.services;
        const vp = cornerstoneViewportService.getCornerstoneViewport(viewportGridService.getState().activeViewportId);
        const found = vp.getImageIds().findIndex(id => id.includes(`/instances/${sop}/`));
        if (found >= 0) await vp.setImageIdIndex(found);
        return found;
      }, plan.seg.sopInstanceUid);
      if (index < 0) throw new Error(`the viewport's stack has no image of SOP instance ${plan.seg.sopInstanceUid}`);
      await waitForCanvas(page, want => window.__viewportState().imageIndex === want, index);
      const stats = await settledStats(page);
      const info = await page.evaluate(points => {
        const { viewportGridService, cornerstoneViewportService, segmentationService } = window.services;
        const viewportId = viewportGridService.getState().activeViewportId;
        const vp = cornerstoneViewportService.getCornerstoneViewport(viewportId);
        return {
          canvasPoints: points.map(p => Array.from(vp.worldToCanvas(p))),
          representations: segmentationService.getSegmentationRepresentations(viewportId).map(r => ({
            segmentationId: r.segmentationId, type: r.type, visible: r.visible })),
          segmentations: segmentationService.getSegmentations().map(s => ({
            label: s.label, segments: Object.values(s.segments || {}).filter(Boolean).map(x => x.label) })),
        };
      }, plan.seg.worldPoints);
      return { prompt, imageIndex: index, viewport: await page.evaluate(() => window.__viewportState()), stats, ...info,
        canvas: await saveCanvas(page, '02-seg-canvas.png'), screenshot: await shot(page, '02-seg-on-t1c.png') };
    });

    await step('sr', page, async () => {
      await openThumbnail(page, plan.sr.seriesUid);
      // OHIF 3.13 asks to track an SR it can rehydrate; an SR it cannot is only drawn.
      const prompt = await answerPrompt(page, 'Yes', 8000);
      const secondPrompt = prompt ? await answerPrompt(page, 'Yes', 3000) : null;
      const panel = page.locator('[data-cy="trackedMeasurements-panel"]').first();
      if (!(await panel.isVisible())) await page.locator('[data-cy="trackedMeasurements-btn"]').click();
      await panel.waitFor({ state: 'visible', timeout: plan.timeoutMs });
      await page.waitForTimeout(1500); // the list fills after hydration's events
      const panelText = await panel.innerText();
      // A row: its title (the measurement's label) and, in the same box, its detail lines.
      const rows = await panel.locator('[data-cy="data-row"]').evaluateAll(elements => elements.map(row => {
        const parent = row.parentElement;
        const box = parent && parent.querySelectorAll('[data-cy="data-row"]').length === 1 ? parent : row;
        return {
          title: (row.querySelector('[data-cy="data-row-title"]') || row).innerText.trim(),
          details: Array.from(box.querySelectorAll('[data-cy="data-row-detail-line"]')).map(e => e.innerText.trim()),
          text: box.innerText.trim(),
        };
      }));
      const badge = await page.locator('[data-cy^="ModalityLoadBadge-"]').allInnerTexts();
      const measurements = await page.evaluate(() => window.services.measurementService.getMeasurements().map(m => ({
        label: m.label, displayText: m.displayText, toolName: m.toolName, referenceSeriesUID: m.referenceSeriesUID })));
      return { prompt, secondPrompt, panelText, rows, badge, measurements,
        viewport: await page.evaluate(() => window.__viewportState()), screenshot: await shot(page, '03-sr-measurements.png') };
    });

    await step('sc', page, async () => {
      await openThumbnail(page, plan.sc.seriesUid);
      const prompt = await answerPrompt(page, 'No', 3000); // OHIF may offer to track the new series
      await waitForCanvas(page, uid => {
        const s = window.__viewportState();
        return s.hasImage && s.seriesUid === uid;
      }, plan.sc.seriesUid);
      const stats = await settledStats(page);
      return { prompt, viewport: await page.evaluate(() => window.__viewportState()), stats,
        screenshot: await shot(page, '04-sc.png') };
    });

    await step('pdf', page, async () => {
      await openThumbnail(page, plan.pdf.seriesUid);
      const prompt = await answerPrompt(page, 'No', 3000);
      const object = page.locator('[data-cy="viewport-pane"] object[type="application/pdf"], [data-cy="viewport-pane"] iframe, [data-cy="viewport-pane"] embed');
      await object.first().waitFor({ state: 'attached', timeout: plan.timeoutMs });
      const pdfDocument = await object.first().evaluate(async el => {
        const src = el.data || el.src;
        const body = new Uint8Array(await (await fetch(src)).arrayBuffer());
        return { tag: el.tagName.toLowerCase(), type: el.type || null, scheme: src.split(':')[0],
          bytes: body.length, magic: String.fromCharCode(...body.slice(0, 5)) };
      });
      await page.waitForTimeout(2500); // Chromium's PDF viewer draws the page
      return { prompt, document: pdfDocument, screenshot: await shot(page, '05-pdf.png') };
    });
  } finally {
    result.timings.total = elapsed();
    fs.writeFileSync(process.argv[3], JSON.stringify(result, null, 1));
    await browser.close();
  }
}

run().catch(err => {
  result.fatal = String(err && err.stack || err).slice(0, 2000);
  fs.writeFileSync(process.argv[3], JSON.stringify(result, null, 1));
  process.exitCode = 1;
});
