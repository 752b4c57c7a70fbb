"""One attempt to one destination (``delivery.dispatch.send_files``): the destination's type picks
the client, and what the attempt logs."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable

import pytest

from segnode.node.delivery.dispatch import PermanentDeliveryError, send_files
from tests.node.delivery.peers import (
    ScriptedHttp,
    ScriptedScp,
    dimse_destination,
    mr_files,
    sop_uid,
    stow_answer,
    stow_destination,
)


def test_each_protocol_reaches_its_own_client(
    scp: Callable[..., ScriptedScp], http: Callable[..., ScriptedHttp], caplog: pytest.LogCaptureFixture
) -> None:
    files = mr_files(1)
    peer = scp()
    server = http(200, stow_answer({sop_uid(files[0]): 0}, {}))
    caplog.set_level(logging.INFO, logger="segnode.node.delivery")
    assert send_files(dimse_destination(peer.port), files).sop_instance_uids == (sop_uid(files[0]),)
    assert send_files(stow_destination(server.url), files).sop_instance_uids == (sop_uid(files[0]),)
    assert peer.received == [sop_uid(files[0])] and len(server.requests) == 1
    delivered = [record for record in caplog.records if record.getMessage() == "delivered"]
    assert [getattr(record, "protocol", None) for record in delivered] == ["dimse", "stow-rs"]


def test_uids_reach_the_logs_only_at_debug(
    http: Callable[..., ScriptedHttp], caplog: pytest.LogCaptureFixture
) -> None:
    files = mr_files(2)
    uids = [sop_uid(path) for path in files]
    server = http(409, stow_answer({}, {uid: 0x0110 for uid in uids}))
    caplog.set_level(logging.DEBUG, logger="segnode.node")
    with pytest.raises(PermanentDeliveryError) as caught:
        send_files(stow_destination(server.url), files)
    assert all(uid in str(caught.value) for uid in uids)  # the job's event log gets them
    for record in caplog.records:
        text = json.dumps(vars(record), default=str)
        if record.levelno > logging.DEBUG:
            assert not any(uid in text for uid in uids), record.getMessage()
    assert any(record.levelno == logging.DEBUG and getattr(record, "error", None) for record in caplog.records)
    assert any(record.levelno == logging.WARNING and getattr(record, "cause", None) == "stow-failed-sop"
               for record in caplog.records)
