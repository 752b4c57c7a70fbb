"""PHI never reaches the logs: pydicom, warnings and uncaught exceptions all come out
as JSON lines with the third-party text withheld.

The canaries ride in the way the field report found them: a SOP Instance UID whose
length runs over the patient elements that follow it, so pydicom's "invalid value"
warning quotes them.
"""

from __future__ import annotations

import json
import logging
import struct
import sys
import threading
import warnings
from collections.abc import Iterator
from io import BytesIO
from typing import Any

import pytest
from pydicom import config as pydicom_config
from pydicom import dcmread

from segnode.node import logs
from segnode.node.logs import WITHHELD_MESSAGE, configure_logging

CANARIES = ("CANARY^PATIENT", "CANARY-ID-123", "19010101", "CANARY STREET")


@pytest.fixture
def node_logging(capsys: pytest.CaptureFixture[str]) -> Iterator[None]:
    """The node's logging setup at DEBUG; every global it touches is put back afterwards.

    Depends on ``capsys`` so the handler it creates writes into the captured stderr.
    """
    root = logging.getLogger()
    saved: dict[str, Any] = {
        "level": root.level,
        "pynetdicom": logging.getLogger("pynetdicom").level,
        "sqlalchemy": logging.getLogger("sqlalchemy").level,
        "showwarning": warnings.showwarning,
        "excepthook": sys.excepthook,
        "threading_excepthook": threading.excepthook,
        "unraisablehook": sys.unraisablehook,
        "reading": pydicom_config.settings.reading_validation_mode,
    }
    configure_logging("DEBUG", "json")
    installed = root.handlers[:]  # it replaced pytest's setup-phase handlers; those are done
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.showwarning = logs._show_warning  # catch_warnings reset it
            yield
    finally:
        root.handlers[:] = [handler for handler in root.handlers if handler not in installed]
        root.setLevel(saved["level"])
        logging.getLogger("pynetdicom").setLevel(saved["pynetdicom"])
        logging.getLogger("sqlalchemy").setLevel(saved["sqlalchemy"])
        warnings.showwarning = saved["showwarning"]
        sys.excepthook = saved["excepthook"]
        threading.excepthook = saved["threading_excepthook"]
        sys.unraisablehook = saved["unraisablehook"]
        pydicom_config.settings.reading_validation_mode = saved["reading"]


def _element(group: int, element: int, value: bytes) -> bytes:
    """One implicit VR little endian element, padded to even length."""
    if len(value) % 2:
        value += b" "
    return struct.pack("<HHI", group, element, len(value)) + value


def _overrunning_dataset() -> bytes:
    patient = (
        _element(0x0010, 0x0010, CANARIES[0].encode())
        + _element(0x0010, 0x0020, CANARIES[1].encode())
        + _element(0x0010, 0x0030, CANARIES[2].encode())
        + _element(0x0010, 0x1040, CANARIES[3].encode())
    )
    return (
        _element(0x0008, 0x0016, b"1.2.840.10008.5.1.4.1.1.4\0")
        + _element(0x0008, 0x0018, b"1.2.3.4\0" + patient)  # the UID swallows the patient
        + _element(0x0010, 0x0010, (CANARIES[0] + "^" + "X" * 70).encode())  # PN too long
        + _element(0x0010, 0x1040, (CANARIES[3] + "Y" * 70).encode())  # LO too long
    )


def _json_lines(text: str) -> list[dict[str, Any]]:
    lines = [line for line in text.splitlines() if line.strip()]
    entries = [json.loads(line) for line in lines]  # fails on any non-JSON line
    assert all(isinstance(entry, dict) for entry in entries)
    return entries


def _assert_no_canary(text: str) -> None:
    for canary in CANARIES:
        assert canary not in text


def test_configure_turns_pydicom_read_validation_off(node_logging: None) -> None:
    assert pydicom_config.settings.reading_validation_mode == pydicom_config.IGNORE


def test_pydicom_validation_warnings_are_withheld(
    node_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    pydicom_config.settings.reading_validation_mode = pydicom_config.WARN
    dataset = dcmread(BytesIO(_overrunning_dataset()), force=True)
    for element in dataset:
        _ = element.value  # pydicom validates (and warns) when it converts a value

    captured = capsys.readouterr()
    _assert_no_canary(captured.out + captured.err)
    entries = _json_lines(captured.err)
    by_logger = {entry["logger"] for entry in entries if entry.get("withheld")}
    assert {"pydicom", "py.warnings"} <= by_logger  # warn_and_log: a log record and a warning
    for entry in entries:
        assert entry["message"] == WITHHELD_MESSAGE
        path, _, line = entry["source"].rpartition(":")
        assert path.endswith(".py") and "pydicom" in path and line.isdigit()
        assert len(entry["message_hash"]) == 16
        int(entry["message_hash"], 16)
    assert any(entry.get("warning_category") == "UserWarning" for entry in entries)
    # Equal texts hash equally: the UI warning is both a pydicom record and a warning.
    pydicom_hashes = {e["message_hash"] for e in entries if e["logger"] == "pydicom"}
    warning_hashes = {e["message_hash"] for e in entries if e["logger"] == "py.warnings"}
    assert pydicom_hashes & warning_hashes


def test_third_party_warning_is_withheld_with_its_location(
    node_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    code = compile(
        "import warnings\nwarnings.warn('lookup failed for CANARY^PATIENT', RuntimeWarning)\n",
        "/opt/thirdparty/leaky.py",
        "exec",
    )
    exec(code, {"__name__": "leaky"})  # noqa: S102 - code "from" a third-party file

    captured = capsys.readouterr()
    _assert_no_canary(captured.err)
    (entry,) = _json_lines(captured.err)
    assert entry["logger"] == "py.warnings"
    assert entry["level"] == "WARNING"
    assert entry["source"] == "/opt/thirdparty/leaky.py:2"
    assert entry["warning_category"] == "RuntimeWarning"


def test_third_party_record_loses_args_extras_and_exception_text(
    node_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    try:
        raise ValueError(f"bad value {CANARIES[1]!r}")
    except ValueError:
        logging.getLogger("pynetdicom.assoc").error(
            "refused %s", CANARIES[0], exc_info=True, extra={"patient": CANARIES[3]}
        )

    captured = capsys.readouterr()
    _assert_no_canary(captured.err)
    (entry,) = _json_lines(captured.err)
    assert entry["logger"] == "pynetdicom.assoc"
    assert entry["level"] == "ERROR"
    assert entry["message"] == WITHHELD_MESSAGE
    assert entry["exception_type"] == "ValueError"
    assert "exception" not in entry and "patient" not in entry


def test_own_records_pass_but_exception_messages_do_not(
    node_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    with logs.log_context(association_id="a-1"):
        logging.getLogger("segnode.node.receiving.scp").info("association accepted", extra={"calling_ae": "MRI1"})
        try:
            raise OSError(f"cannot write store/{CANARIES[1]}.dcm")
        except OSError:
            logging.getLogger("segnode.node.receiving.receiver").exception("write failed")

    captured = capsys.readouterr()
    _assert_no_canary(captured.err)
    accepted, failed = _json_lines(captured.err)
    assert accepted["message"] == "association accepted"
    assert accepted["calling_ae"] == "MRI1" and accepted["association_id"] == "a-1"
    assert "withheld" not in accepted
    assert failed["message"] == "write failed"
    assert "OSError: <message withheld, hash " in failed["exception"]
    assert "test_logs.py" in failed["exception"]  # the frames stay


def test_log_context_nests_and_ends_with_its_block(
    node_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    """A job's fields never outlive the job: the worker pool carries them as a copy."""
    job_log = logging.getLogger("segnode.node.jobs.runner")
    with logs.log_context(job_id=7):
        with logs.log_context(step="inferring"):
            snapshot = logs.current_log_context()
            job_log.info("inside")
        job_log.info("after the step")
    job_log.info("after the job")
    snapshot["job_id"] = 8  # a copy: changing it changes nothing

    inside, after_step, after_job = _json_lines(capsys.readouterr().err)
    assert snapshot == {"job_id": 8, "step": "inferring"}
    assert (inside["job_id"], inside["step"]) == (7, "inferring")
    assert after_step["job_id"] == 7 and "step" not in after_step
    assert "job_id" not in after_job and logs.current_log_context() == {}


def test_uncaught_exception_in_a_thread_is_a_json_line(
    node_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    def crash() -> None:
        try:
            raise KeyError(CANARIES[2])
        except KeyError as exc:
            raise RuntimeError(f"no study for {CANARIES[0]}") from exc

    thread = threading.Thread(target=crash, name="worker-1")
    thread.start()
    thread.join()

    captured = capsys.readouterr()
    _assert_no_canary(captured.err)
    (entry,) = _json_lines(captured.err)
    assert entry["message"] == "uncaught exception"
    assert entry["where"] == "thread" and entry["thread_name"] == "worker-1"
    assert "KeyError: <message withheld" in entry["exception"]
    assert "RuntimeError: <message withheld" in entry["exception"]
    assert "in crash" in entry["exception"]


def test_uncaught_exception_in_main_is_a_json_line(
    node_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    try:
        raise ValueError(CANARIES[3])
    except ValueError:
        sys.excepthook(*sys.exc_info())

    captured = capsys.readouterr()
    _assert_no_canary(captured.err)
    (entry,) = _json_lines(captured.err)
    assert entry["where"] == "main"
    assert "ValueError: <message withheld" in entry["exception"]


def test_before_configuration_the_fallback_handler_is_json_and_withheld(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(logging.getLogger(), "handlers", [])  # nothing configured yet
    logging.getLogger("somelib").warning("patient %s", CANARIES[0])

    captured = capsys.readouterr()
    _assert_no_canary(captured.err)
    (entry,) = _json_lines(captured.err)
    assert entry["logger"] == "somelib" and entry["message"] == WITHHELD_MESSAGE


def test_a_record_that_cannot_be_formatted_reports_as_json(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Straight to the node's handler: pytest's own capture handler fails the test on this.
    record = logging.getLogger("segnode.node.receiving.scp").makeRecord(
        "segnode.node.receiving.scp", logging.INFO, "scp.py", 1, "two values %s %s", (CANARIES[0],), None
    )
    logs.StderrHandler(logs.JsonFormatter()).handle(record)  # one argument short

    captured = capsys.readouterr()
    _assert_no_canary(captured.err)
    (entry,) = _json_lines(captured.err)
    assert entry["message"] == "a log record could not be written"
    assert entry["record_logger"] == "segnode.node.receiving.scp" and entry["error_type"] == "TypeError"
