"""twistd's log file: rotated at 1 MB, and only the newest few rotated files kept."""

from __future__ import annotations

import os

from twisted.python import logfile

from fbstream.tap import keep_rotated_logs


def test_only_the_newest_rotated_log_files_are_kept(tmp_path, monkeypatch):
    # Put back, after the test, the constructor keep_rotated_logs replaces
    # (LogFile's own, if another test made it one, else BaseLogFile's).
    own = logfile.LogFile.__dict__.get("fromFullPath", logfile.BaseLogFile.__dict__["fromFullPath"])
    monkeypatch.setattr(logfile.LogFile, "fromFullPath", own)
    keep_rotated_logs(3)
    keep_rotated_logs(3)  # twice is the same as once
    log = logfile.LogFile.fromFullPath(str(tmp_path / "twistd.log"))
    for i in range(8):
        log.write("line %d\n" % (i,))
        log.rotate()
    log.close()
    assert sorted(os.listdir(tmp_path)) == ["twistd.log", "twistd.log.1", "twistd.log.2", "twistd.log.3"]
    # Asked for explicitly, another number still wins.
    assert logfile.LogFile.fromFullPath(str(tmp_path / "other.log"), maxRotatedFiles=7).maxRotatedFiles == 7
