"""Hide, restore and branches: what retrieval, segment lookup and the contact sheet see; nothing is ever deleted or
rewritten, bad requests change nothing, and banks of earlier versions keep working."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
import torch

from memv2v_core.bank.contact_sheet import contact_sheet
from memv2v_core.bank.memory_bank import (BankFormatError, BankStateError, MemoryBank, UnknownEntryError,
                                          validate_bank_name)
from memv2v_core.camera.presets import preset_trajectory
from memv2v_core.retrieval.descriptors import select_segments, source_segments
from memv2v_core.retrieval.fov import fov_mask
from memv2v_core.retrieval.fov_retrieval import select_by_fov

TURNS = ("pan_left", "pan_right", "arc_right")  # three NVS turns whose views all overlap the target below


def latent(seed: int) -> torch.Tensor:
    return torch.randn(1, 16, 2, 4, 4, generator=torch.Generator().manual_seed(seed))


def add_turn(bank: MemoryBank, seed: int, preset: str, parents=()) -> str:
    trajectory = preset_trajectory(preset, frames=9)
    return bank.add(latent(seed), latent_format="wan21", camera=trajectory.c2w, fov_mask=fov_mask(trajectory),
                    prompt=preset, seed=seed, parents=list(parents))


@pytest.fixture
def bank(tmp_path) -> MemoryBank:
    return MemoryBank.open(tmp_path / "scene", create=True)


@pytest.fixture
def turns(bank) -> list[str]:
    """Turn 1, then turns 2 and 3 each conditioned on the turn before (their parents, as FOV Retrieve records)."""
    ids: list[str] = []
    for seed, preset in enumerate(TURNS, start=1):
        ids.append(add_turn(bank, seed, preset, parents=ids[-1:]))
    return ids


def retrieved(bank, **kwargs) -> list[str]:
    selection, rows = select_by_fov(bank, preset_trajectory("pan_right", frames=9, strength=0.5), top_k=6, **kwargs)
    assert {row["entry_id"] for row in rows} == set(selection.entry_ids)  # every candidate was scored
    return sorted(selection.entry_ids, key=bank.ids(include_hidden=True).index)


def manifest(bank) -> dict:
    return json.loads((bank.path / "manifest.json").read_text())


def files_state(bank) -> dict:
    """Every entry file's bytes: hiding must never touch them."""
    return {p.name: p.read_bytes() for p in sorted((bank.path / "entries").iterdir())}


# ---------------------------------------------------------------------------------------------------------------
# Hide and restore

def test_hide_takes_an_entry_out_of_retrieval_and_restore_brings_it_back(bank, turns):
    t1, t2, t3 = turns
    assert retrieved(bank) == [t1, t2, t3]
    assert bank.retrieval_scope() == ""
    bank.hide(t2)
    assert retrieved(bank) == [t1, t3] and bank.retrieval_scope() == "1 hidden entry left out"
    assert MemoryBank.open(bank.path).ids() == [t1, t3]  # durable: another handle (another process) sees it
    bank.restore(t2)
    assert retrieved(bank) == [t1, t2, t3]
    assert MemoryBank.open(bank.path).ids() == [t1, t2, t3]


def test_the_views_of_a_bank_with_a_hidden_entry(bank, turns):
    t1, t2, t3 = turns
    revision = bank.revision()
    bank.hide(t2)
    assert bank.revision() != revision  # Bank Load re-runs, so retrieval sees the change
    assert bank.ids() == [t1, t3] and list(bank) == [t1, t3] and len(bank) == 2
    assert bank.ids(include_hidden=True) == [t1, t2, t3] and bank.hidden_ids() == [t2]
    assert t2 not in bank and t1 in bank and bank.is_hidden(t2) and not bank.is_hidden(t1)
    assert [e.entry_id for e in bank.entries()] == [t1, t3]
    assert [e.entry_id for e in bank.entries(include_hidden=True)] == turns
    # a hidden entry is still there in full: its record, its data, its lineage
    assert bank.entry(t2).prompt == "pan_right" and torch.equal(bank.load_latent(t2), latent(2))
    assert bank.lineage(t3) == [t3, t2, t1]
    assert bank.latent_format == "wan21" and bank.problems == []


def test_hide_and_restore_change_only_the_manifests_first_line(bank, turns):
    before_files, before = files_state(bank), (bank.path / "manifest.json").read_text().splitlines()
    bank.hide(turns[0])
    after = (bank.path / "manifest.json").read_text().splitlines()
    assert after[1:] == before[1:] and after[0] != before[0]  # entry records byte-identical
    assert manifest(bank)["hidden"] == {turns[0]: manifest(bank)["hidden"][turns[0]]}
    bank.restore(turns[0])
    restored = (bank.path / "manifest.json").read_text().splitlines()
    assert restored[1:] == before[1:] and "hidden" not in manifest(bank)  # an all-visible bank has no new key
    assert files_state(bank) == before_files and bank.verify(deep=True) == []


def test_descendants_of_a_hidden_entry_stay_visible(bank, turns):
    bank.hide(turns[0])
    assert bank.ids() == turns[1:] and retrieved(bank) == turns[1:]


@pytest.mark.parametrize("action", ["hide", "restore"])
def test_unknown_and_malformed_ids_are_refused_and_nothing_changes(bank, turns, action):
    before = (bank.path / "manifest.json").read_bytes()
    with pytest.raises(UnknownEntryError, match="no entry '0123456789abcdef'"):
        getattr(bank, action)("0123456789abcdef")
    for bad in ("../../etc/passwd", turns[0].upper(), turns[0][:15], "", None, 7):
        with pytest.raises(ValueError, match="is not an entry id"):
            getattr(bank, action)(bad)
    assert (bank.path / "manifest.json").read_bytes() == before and bank.ids() == turns


def test_hiding_a_hidden_entry_and_restoring_a_visible_one_say_so_and_change_nothing(bank, turns):
    with pytest.raises(BankStateError, match=f"entry {turns[1]} .* is not hidden, so there is nothing to restore"):
        bank.restore(turns[1])
    bank.hide(turns[1])
    before = (bank.path / "manifest.json").read_bytes()
    with pytest.raises(BankStateError, match=f"entry {turns[1]} .* is already hidden .*bank.restore"):
        bank.hide(turns[1])
    assert (bank.path / "manifest.json").read_bytes() == before
    assert bank.ids(include_hidden=True) == turns and bank.hidden_ids() == [turns[1]]


def test_adding_the_content_of_a_hidden_entry_again_keeps_it_hidden(bank, turns):
    bank.hide(turns[2])
    assert add_turn(bank, 3, "arc_right", parents=[turns[1]]) == turns[2]  # same content: same id, nothing written
    assert bank.ids() == turns[:2] and len(bank.ids(include_hidden=True)) == 3


def test_a_new_entry_is_visible_and_keeps_others_hidden(bank, turns):
    bank.hide(turns[0])
    t4 = add_turn(bank, 4, "pan_left", parents=[turns[2]])
    assert bank.ids() == [turns[1], turns[2], t4] and bank.hidden_ids() == [turns[0]]
    assert MemoryBank.open(bank.path).hidden_ids() == [turns[0]]


def test_threads_hiding_through_separate_handles_lose_no_change(bank, turns):
    extra = [add_turn(bank, 10 + k, TURNS[k % 3]) for k in range(9)]
    handles = [MemoryBank.open(bank.path) for _ in range(3)]
    errors = []

    def hide_some(handle, ids):
        try:
            for entry_id in ids:
                handle.hide(entry_id)
        except Exception as error:  # noqa: BLE001 - reported below
            errors.append(error)
    threads = [threading.Thread(target=hide_some, args=(h, extra[i::3])) for i, h in enumerate(handles)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    fresh = MemoryBank.open(bank.path)
    assert fresh.ids() == turns and sorted(fresh.hidden_ids()) == sorted(extra)


# ---------------------------------------------------------------------------------------------------------------
# What else sees only visible entries: segment lookup (retrieval and stitching) and the contact sheet

def add_segment(bank, index: int, seed: int, descriptor=None) -> str:
    return bank.add(latent(seed), latent_format="wan21", segment_index=index, source_id="video-a",
                    descriptor=descriptor)


def test_segment_lookup_skips_hidden_edits_so_an_undone_edit_gives_back_the_one_before(bank):
    first_edit = add_segment(bank, 0, 1, torch.tensor([1.0, 0.0]))
    retry = add_segment(bank, 0, 2, torch.tensor([0.0, 1.0]))
    segment_1 = add_segment(bank, 1, 3, torch.tensor([1.0, 0.0]))
    assert [e.entry_id for e in source_segments(bank, "video-a")[0]] == [first_edit, retry, segment_1]
    bank.hide(retry)  # the artist undoes the second try of segment 0
    assert [e.entry_id for e in source_segments(bank, "video-a")[0]] == [first_edit, segment_1]
    result = select_segments(bank, "video-a", 2, torch.tensor([1.0, 0.0]), top_k=4)
    assert retry not in result.selection.entry_ids and first_edit in result.selection.entry_ids


def test_the_contact_sheet_draws_visible_entries_and_counts_hidden_ones(bank, turns):
    bank.hide(turns[1])
    sheet = contact_sheet(bank, max_entries=12, frames=1, thumb_height=16)
    assert sheet.entry_ids == (turns[0], turns[2]) and "2 entries (1 hidden, not shown)" in sheet.table
    assert turns[1] not in sheet.table
    for entry_id in (turns[0], turns[2]):
        bank.hide(entry_id)
    assert "has no visible entries (3 hidden)" in contact_sheet(bank).table


# ---------------------------------------------------------------------------------------------------------------
# Lineage and branches

def test_lineage_is_the_entry_and_its_ancestors(bank, turns):
    t1, t2, t3 = turns
    assert bank.lineage(t1) == [t1] and bank.lineage(t2) == [t2, t1] and bank.lineage(t3) == [t3, t2, t1]
    foreign = "f" * 16  # parents may name entries of other banks: kept as provenance, not part of this lineage
    t4 = add_turn(bank, 4, "pan_left", parents=[t3, foreign, t1])
    assert bank.lineage(t4) == [t4, t3, t1, t2]
    with pytest.raises(UnknownEntryError):
        bank.lineage("0" * 16)


def test_retrieval_restricted_to_a_lineage(bank, turns):
    t1, t2, t3 = turns
    side = add_turn(bank, 5, "pan_right", parents=[t1])  # another take from turn 1
    assert retrieved(bank) == [t1, t2, t3, side]
    assert retrieved(bank, lineage_of=t1) == [t1]
    assert retrieved(bank, lineage_of=t3) == [t1, t2, t3]
    assert retrieved(bank, lineage_of=side) == [t1, side]
    bank.hide(t2)  # a hidden ancestor is not retrieved either
    assert retrieved(bank, lineage_of=t3) == [t1, t3]
    with pytest.raises(BankStateError, match="cannot start retrieval from entry .* it is hidden"):
        retrieved(bank, lineage_of=t2)


def test_a_branch_from_turn_1_retrieves_turn_1_then_what_is_added_on_it(bank, turns):
    t1, t2, t3 = turns
    info = bank.branch("from turn 1", t1)
    assert info["name"] == "from turn 1" and info["from"] == t1 and bank.active_branch == "from turn 1"
    assert retrieved(bank) == [t1]  # the bank-level setting: every retrieval sees only the branch
    t4 = add_turn(bank, 4, "pan_left", parents=[])  # retrieved nothing, yet it is on the branch
    assert bank.entry(t4).branch == "from turn 1" and bank.entry(t1).branch is None
    assert retrieved(bank) == [t1, t4] and bank.branch_ids("from turn 1") == [t1, t4]
    reopened = MemoryBank.open(bank.path)
    assert reopened.active_branch == "from turn 1" and reopened.branches()["from turn 1"]["from"] == t1
    assert retrieved(reopened) == [t1, t4]
    assert bank.retrieval_scope() == f"branch 'from turn 1' (from {t1}) is active: 2 of 4 visible entries"
    bank.switch_branch(None)  # back to the whole bank
    assert bank.active_branch is None and retrieved(bank) == [t1, t2, t3, t4]
    assert MemoryBank.open(bank.path).active_branch is None
    bank.switch_branch("from turn 1")
    assert retrieved(bank) == [t1, t4]
    assert retrieved(bank, lineage_of=t3) == [t1, t2, t3]  # an explicit start wins over the bank's branch


def test_the_same_content_on_a_branch_is_a_new_entry(bank, turns):
    bank.branch("b", turns[2])
    again = add_turn(bank, 3, "arc_right", parents=[turns[1]])
    assert again != turns[2] and bank.entry(again).branch == "b"
    assert bank.entry(turns[2]).branch is None


def test_branch_refusals_change_nothing(bank, turns):
    t1, t2, _ = turns
    bank.hide(t2)
    before = (bank.path / "manifest.json").read_bytes()
    with pytest.raises(BankStateError, match=f"cannot branch from entry {t2} .* it is hidden .*Restore it first"):
        bank.branch("alt", t2)
    with pytest.raises(UnknownEntryError):
        bank.branch("alt", "0" * 16)
    for bad in ("", " lead", "a/b", "../x", "x" * 65, "trail ", "ü", None):
        with pytest.raises(ValueError, match="branch name .* is refused"):
            bank.branch(bad, t1)
    with pytest.raises(ValueError, match="is not an entry id"):
        bank.branch("alt", "../" + t1)
    with pytest.raises(ValueError, match="branch 'nope' does not exist"):
        bank.switch_branch("nope")
    with pytest.raises(ValueError, match="branch 'nope' does not exist"):
        bank.add(latent(9), latent_format="wan21", branch="nope")
    assert (bank.path / "manifest.json").read_bytes() == before
    bank.branch("alt", t1)
    with pytest.raises(BankStateError, match="already starts from entry"):
        bank.branch("alt", turns[2])
    assert bank.branch("alt", t1)["from"] == t1  # the same branch again only activates it


# ---------------------------------------------------------------------------------------------------------------
# Copies, recovery, format compatibility

def test_export_is_a_full_copy_with_hidden_entries_and_branches(bank, turns, tmp_path):
    bank.hide(turns[1])
    bank.branch("alt", turns[0])
    copy = bank.export(tmp_path / "copy")
    assert copy.ids(include_hidden=True) == turns and copy.hidden_ids() == [turns[1]]
    assert copy.active_branch == "alt" and copy.branches() == bank.branches()


def test_recover_keeps_hidden_entries_and_branches_of_a_readable_manifest(bank, turns):
    bank.hide(turns[1])
    bank.branch("alt", turns[0], activate=False)
    recovered = MemoryBank.recover(bank.path)
    assert recovered.hidden_ids() == [turns[1]] and list(recovered.branches()) == ["alt"]
    assert recovered.active_branch is None and recovered.ids(include_hidden=True) == turns


def test_a_bank_of_an_earlier_version_opens_and_gains_no_new_keys_until_used(bank, turns):
    keys = set(manifest(bank))
    assert keys == {"format", "schema_version", "bank_id", "created", "revision", "entries"}
    record = manifest(bank)["entries"][0]
    assert "branch" not in record  # main-line records are exactly what earlier versions wrote
    assert manifest(bank)["schema_version"] == 1
    bank.hide(turns[0])
    assert set(manifest(bank)) == keys | {"hidden"} and manifest(bank)["schema_version"] == 1


def test_a_malformed_state_field_is_reported_shown_as_visible_and_never_rewritten(bank, turns):
    data = manifest(bank)
    data["hidden"] = ["not", "a", "map"]
    (bank.path / "manifest.json").write_text(json.dumps(data))
    bank.refresh()
    assert bank.ids() == turns and any("'hidden' is not a map" in p for p in bank.problems)
    with pytest.raises(BankFormatError, match="hide, restore and branch are refused"):
        bank.hide(turns[0])
    add_turn(bank, 4, "pan_left")  # adding still works and keeps the field as it was
    assert manifest(bank)["hidden"] == ["not", "a", "map"] and len(bank) == 4


@pytest.mark.parametrize("name", ["\uff0e\uff0e", "a\uff0fb", "a\uff3cb", "\uff23\uff2f\uff2e", "x\u202etxt",
                                  "zero\u200bwidth", "nbsp\u00a0", "\ufe52hidden", "\u2025"])
def test_look_alike_and_invisible_bank_names_are_refused(name):
    with pytest.raises(ValueError, match="refused"):
        validate_bank_name(name)
