"""Run folders: numbered, never shared, even when several runs start at the same moment."""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

from utils.common.run_dir import claim_run_dir


def test_run_folders_are_numbered_and_never_reused(tmp_path):
    (tmp_path / "exp3").mkdir()  # a gap is filled, an existing folder is skipped
    claimed = [claim_run_dir(tmp_path, "exp") for _ in range(4)]
    assert [p.name for p in claimed] == ["exp", "exp2", "exp4", "exp5"]
    assert all(p.is_dir() and not any(p.iterdir()) for p in claimed)


def test_a_file_in_the_way_is_skipped_and_names_are_made_safe(tmp_path):
    (tmp_path / "predict").write_text("not a folder")
    assert claim_run_dir(tmp_path / "new" / "logs", "a/b:c").name == "a_b_c"
    assert claim_run_dir(tmp_path, "predict").name == "predict2"


def test_runs_started_at_the_same_moment_get_different_folders(tmp_path):
    """Threads released by one barrier race for the same name: mkdir lets exactly one of them have each folder (the
    same holds for processes; os.mkdir releases the GIL, so the threads really do race)."""
    racers = 8
    barrier = threading.Barrier(racers)

    def claim(_) -> str:
        barrier.wait()
        return claim_run_dir(tmp_path, "exp").name

    with ThreadPoolExecutor(racers) as pool:
        claimed = list(pool.map(claim, range(racers)))
    assert sorted(claimed) == sorted(["exp"] + [f"exp{n}" for n in range(2, racers + 1)])
