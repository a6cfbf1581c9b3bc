"""The task protocol's log tail: OAAS_ records found in bounded slices, resumable from an offset."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from oaasd.launchers.protocol import LineTail, Report, parse_line


def reference(data: bytes, max_line: int) -> list[bytes]:
    """What a tail must return for ``data``: every whole OAAS_ line no longer than ``max_line``."""
    return [line for line in data.split(b"\n") if line.startswith(b"OAAS_") and len(line) <= max_line]


def read_all(tail: LineTail, final: bool = True, limit: int = 100_000) -> list[bytes]:
    out: list[bytes] = []
    for _ in range(limit):
        out += tail.read(final)
        if not tail.more:
            return out
    raise AssertionError("the tail never caught up")


PIECES = st.sampled_from([b"OAAS_METRIC {\"step\": 1}", b"OAAS_RESULT {}", b"OAAS_", b"OAA", b"O", b"y", b"yyyyyyyy",
                          b"log OAAS_METRIC {}", b"\n", b"\n", b"\n", b"OAAS_METRIC " + b"9" * 40])


@settings(max_examples=300, deadline=None)
@given(pieces=st.lists(PIECES, max_size=60), chunk=st.integers(1, 64), max_line=st.integers(5, 40),
       max_records=st.integers(1, 4), stop=st.integers(0, 200), data=st.data())
def test_records_across_slices_and_a_resume_match_a_whole_read(tmp_path_factory, pieces, chunk, max_line,
                                                               max_records, stop, data):
    """Any chunk size, line cap, record cap and resume point: each record exactly once, no log text as one."""
    text = b"".join(pieces)
    path = Path(tmp_path_factory.mktemp("tail")) / "stdout.log"
    path.write_bytes(text)
    first = LineTail(path, chunk=chunk, max_line=max_line, max_records=max_records)
    got: list[bytes] = []
    for _ in range(stop):
        got += first.read()
        assert len(first._carry) <= max_line, "an unfinished line is kept only while it may be a record"
    first.close()
    resumed = LineTail(path, first.offset, chunk=data.draw(st.integers(1, 64)), max_line=max_line,
                       max_records=max_records)
    got += read_all(resumed)
    resumed.close()
    assert got == reference(text, max_line)


def test_a_growing_file_gives_each_record_once_when_its_line_is_finished(tmp_path):
    path = tmp_path / "stdout.log"
    path.write_bytes(b"training\nOAAS_METRIC {\"st")
    tail = LineTail(path)
    assert tail.read() == []
    assert tail.offset == len(b"training\n"), "the resume point is the start of the unfinished record"
    with open(path, "ab") as f:
        f.write(b"ep\": 1}\nmore text\nOAAS_RESULT {\"ok\": true}")
    assert tail.read() == [b"OAAS_METRIC {\"step\": 1}"]
    assert tail.read(final=True) == [b"OAAS_RESULT {\"ok\": true}"]
    assert tail.offset == path.stat().st_size


def test_a_long_line_is_log_text_and_costs_no_memory(tmp_path):
    """8 MiB without a newline (starting like a record) is skipped in 1 MiB slices, never kept whole."""
    path = tmp_path / "stdout.log"
    path.write_bytes(b"OAAS_METRIC " + b"1" * (8 << 20) + b"\nOAAS_METRIC {\"step\": 2}\n")
    tail = LineTail(path, max_line=4096)
    found: list[bytes] = []
    while True:
        found += tail.read()
        assert len(tail._carry) <= 4096
        if not tail.more:
            break
    assert found == [b"OAAS_METRIC {\"step\": 2}"]


def test_resuming_inside_a_log_line_does_not_take_its_rest_for_a_record(tmp_path):
    path = tmp_path / "stdout.log"
    text = b"log text OAAS_METRIC {\"fake\": 1}\nOAAS_METRIC {\"real\": 1}\n"
    path.write_bytes(text)
    tail = LineTail(path, offset=text.index(b"OAAS_"))
    assert read_all(tail) == [b"OAAS_METRIC {\"real\": 1}"]


def test_many_records_come_in_bounded_batches(tmp_path):
    path = tmp_path / "stdout.log"
    path.write_bytes(b"".join(b"OAAS_METRIC {\"step\": %d}\n" % i for i in range(2500)))
    tail = LineTail(path, max_records=1000)
    sizes = []
    while True:
        sizes.append(len(tail.read()))
        if not tail.more:
            break
    assert sizes == [1000, 1000, 500]


def test_malformed_lines_keep_only_the_newest_problems():
    report = Report()
    for i in range(10_000):
        assert parse_line(b"OAAS_METRIC {bad %d" % i, report) is None
    assert 0 < len(report.problems) <= 40
    assert "OAAS_METRIC: not valid JSON" in report.problems[-1]
    assert parse_line(b"OAAS_METRIC {\"step\": 1}", report) == {"step": 1}
    assert report.metrics == [], "a metric is returned to the caller, who keeps it or not"
