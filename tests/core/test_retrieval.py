"""FOV retrieval over the real MemoryBank: ranking, rows, skipped entries, mask caching, empty banks."""

import pytest
import torch
from kornia.geometry.conversions import axis_angle_to_rotation_matrix

import memv2v_core.retrieval.fov_retrieval as retrieval
from memv2v_core.bank.memory_bank import MemoryBank
from memv2v_core.camera.trajectory import Trajectory
from memv2v_core.camera.presets import preset_trajectory
from memv2v_core.retrieval.preview import preview_tracks_from_bank
from memv2v_core.retrieval.fov import FOVParams, fov_mask, fov_scores, mask_key
from memv2v_core.retrieval.fov_retrieval import format_score_table, rank_bank_by_fov, select_by_fov

STORED = ("tilt_up", "pan_right", "zoom_out", "arc_right", "pan_left")


def latent(seed: int) -> torch.Tensor:
    return torch.randn(1, 16, 2, 4, 4, generator=torch.Generator().manual_seed(seed))


@pytest.fixture
def bank(tmp_path):
    """A bank of five preset generations (stored with their default mask, as BankAdd should) and one without camera."""
    bank = MemoryBank.open(tmp_path / "scene", create=True)
    for seed, name in enumerate(STORED):
        trajectory = preset_trajectory(name)
        bank.add(latent(seed), latent_format="wan21", camera=trajectory.c2w, intrinsics=trajectory.intrinsics,
                 fov_mask=fov_mask(trajectory), prompt=name)
    bank.add(latent(99), latent_format="wan21", prompt="no camera")
    return bank


def prompts(bank, entry_ids):
    return [bank.entry(entry_id).prompt for entry_id in entry_ids]


def count_projections(monkeypatch) -> list:
    calls = []
    original = retrieval.fov_mask

    def counting(trajectory, *args, **kwargs):
        calls.append(trajectory.name)
        return original(trajectory, *args, **kwargs)
    monkeypatch.setattr(retrieval, "fov_mask", counting)
    return calls


def test_selects_the_best_covering_entries_best_first(bank):
    target = preset_trajectory("pan_right", strength=1.2)
    selection, rows = select_by_fov(bank, target, top_k=3)
    assert selection.mode == "nvs" and selection.bank is bank and len(selection) == 3
    assert prompts(bank, selection.entry_ids)[:2] == ["pan_right", "arc_right"]
    assert [item.score for item in selection.items] == sorted((item.score for item in selection.items), reverse=True)
    expected = fov_scores(target, [preset_trajectory(name) for name in STORED])
    by_prompt = {bank.entry(r["entry_id"]).prompt: r for r in rows}
    for name, score in zip(STORED, expected):
        assert by_prompt[name]["score"] == pytest.approx(score, abs=1e-9)
    top = selection.items[0]
    assert top.score == pytest.approx(0.5 * top.details["iou"] + 0.5 * top.details["containment"])
    assert [r["entry_id"] for r in rows] == bank.ids()  # one row per entry, in bank order
    assert sorted(r["rank"] for r in rows if r["rank"] is not None) == [1, 2, 3]
    skipped = by_prompt["no camera"]
    assert skipped["skipped"] == "no camera" and skipped["score"] is None and skipped["rank"] is None


def test_lambda_one_ranks_by_iou_alone(bank):
    selection, rows = select_by_fov(bank, preset_trajectory("pan_right"), top_k=5, lam=1.0)
    assert all(item.score == pytest.approx(item.details["iou"]) for item in selection.items)


def test_stored_masks_are_used_and_other_settings_are_cached(bank, monkeypatch):
    calls = count_projections(monkeypatch)
    target = preset_trajectory("pan_left")
    select_by_fov(bank, target)
    assert calls == ["pan_left"]  # only the target was projected: every entry's stored mask was used
    calls.clear()
    wide = FOVParams(radius=10.0)
    first_selection, _ = select_by_fov(bank, target, params=wide)
    assert len(calls) == 1 + len(STORED)  # new settings: each entry projected once ...
    some_id = first_selection.entry_ids[0]
    cached = bank.load_tensor(some_id, mask_key(wide))
    assert cached is not None and cached.dtype == torch.uint8 and cached.numel() == 8100
    calls.clear()
    again, _ = select_by_fov(MemoryBank.open(bank.path), target, radius=10.0)  # a fresh handle reads the cache
    assert calls == ["pan_left"] and again.entry_ids == first_selection.entry_ids  # ... and never again


def test_entries_without_a_stored_mask_get_one_from_their_camera(tmp_path, monkeypatch):
    bank = MemoryBank.open(tmp_path / "no_masks", create=True)
    trajectory = preset_trajectory("tilt_down")
    entry_id = bank.add(latent(1), latent_format="wan21", camera=trajectory.c2w)
    calls = count_projections(monkeypatch)
    selection, _ = select_by_fov(bank, trajectory)
    assert selection.items[0].score == pytest.approx(1.0) and len(calls) == 2
    assert torch.equal(bank.load_tensor(entry_id, "fov_mask"), fov_mask(trajectory))  # cached under the default slot
    calls.clear()
    select_by_fov(bank, trajectory)
    assert len(calls) == 1


def test_a_target_away_from_the_scene_origin_is_scored_in_its_own_frame(bank, monkeypatch):
    move = torch.eye(4)
    move[:3, :3] = axis_angle_to_rotation_matrix(torch.tensor([[0.0, 0.7, 0.0]]))[0]
    move[:3, 3] = torch.tensor([0.3, 0.0, -0.5])
    base = preset_trajectory("arc_left")
    target = base.with_poses(move @ base.c2w)
    calls = count_projections(monkeypatch)
    cache_writes = []
    monkeypatch.setattr(bank, "put_cache", lambda *args: cache_writes.append(args))
    selection, rows = select_by_fov(bank, target, top_k=5)
    assert len(calls) == 1 + len(STORED)  # stored masks hold for the scene origin only: candidates re-projected
    assert cache_writes == []  # and those target-specific masks are not cached
    expected = fov_scores(target, [preset_trajectory(name) for name in STORED])
    by_prompt = {bank.entry(r["entry_id"]).prompt: r["score"] for r in rows}
    assert [by_prompt[name] for name in STORED] == pytest.approx(expected, abs=1e-9)
    assert len(selection) == 5


def test_an_unusable_stored_mask_is_recomputed(tmp_path, caplog):
    bank = MemoryBank.open(tmp_path / "odd_mask", create=True)
    trajectory = preset_trajectory("zoom_in")
    bank.add(latent(3), latent_format="wan21", camera=trajectory.c2w, fov_mask=torch.zeros(100, dtype=torch.uint8))
    selection, _ = select_by_fov(bank, trajectory)
    assert selection.items[0].score == pytest.approx(1.0)  # scored from the camera, not the broken mask
    assert "stored fov_mask is unusable" in caplog.text


def test_empty_bank_gives_an_empty_selection_and_large_top_k_is_fine(tmp_path, bank):
    empty = MemoryBank.open(tmp_path / "empty", create=True)
    selection, rows = select_by_fov(empty, preset_trajectory("pan_left"), top_k=6)
    assert len(selection) == 0 and rows == []
    assert format_score_table(rows) == "memory bank is empty: nothing to retrieve"
    selection, _ = select_by_fov(bank, preset_trajectory("pan_left"), top_k=50)
    assert len(selection) == len(STORED)  # every entry with a camera, none without
    selection, _ = select_by_fov(bank, preset_trajectory("pan_left"), top_k=0)
    assert len(selection) == 0


def test_an_invalid_stored_camera_is_skipped_not_fatal(tmp_path):
    bank = MemoryBank.open(tmp_path / "odd", create=True)
    stretched = torch.eye(4).repeat(3, 1, 1)
    stretched[:, 0, 0] = 2.0
    bad_id = bank.add(latent(5), latent_format="wan21", camera=stretched)
    good = preset_trajectory("pan_right")
    good_id = bank.add(latent(6), latent_format="wan21", camera=good.c2w)
    selection, rows = select_by_fov(bank, good)
    assert selection.entry_ids == [good_id]
    bad_row = next(r for r in rows if r["entry_id"] == bad_id)
    assert bad_row["skipped"].startswith("unreadable:") and "not a rigid rotation" in bad_row["skipped"]
    table = format_score_table(rows)
    assert good_id in table and f"{bad_id}  skipped: unreadable" in table


def test_bad_arguments_are_refused_with_the_value(bank):
    with pytest.raises(ValueError, match="top_k=-2"):
        select_by_fov(bank, preset_trajectory("pan_left"), top_k=-2)
    with pytest.raises(ValueError, match="lambda=2"):
        select_by_fov(bank, preset_trajectory("pan_left"), lam=2)


def test_score_table_and_preview_tracks_cover_every_entry(bank):
    ranking = rank_bank_by_fov(bank, preset_trajectory("pan_right"), top_k=2)
    table = format_score_table(ranking.rows).splitlines()
    assert table[0].split() == ["rank", "entry", "IoU", "contain", "score"]
    assert table[1].lstrip().startswith("1 ") and table[2].lstrip().startswith("2 ") and len(table) == 7
    assert table[-1].endswith("skipped: no camera")
    labelled = format_score_table(ranking.rows, {r["entry_id"]: bank.entry(r["entry_id"]).prompt
                                                 for r in ranking.rows}).splitlines()
    assert labelled[0].endswith("label") and labelled[1].endswith("pan_right")
    assert labelled[-1].endswith("skipped: no camera  (no camera)")
    tracks = preview_tracks_from_bank(bank, preset_trajectory("pan_right"), ranking.rows, ranking.masks)
    assert len(tracks) == 6 and sum(t.rank is not None for t in tracks) == 2
    assert sum(t.trajectory is None for t in tracks) == 1 and isinstance(tracks[0].trajectory, Trajectory)
