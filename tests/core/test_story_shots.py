"""A story's shots in the memory bank: one entry per shot index (the newest), only shots before the current one."""

from __future__ import annotations

import pytest
import torch

from memv2v_core.bank.memory_bank import MemoryBank
from memv2v_core.story import next_shot_index, shot_of, story_extra, story_shots


def _add(bank: MemoryBank, story: str, shot: int, cut: bool, seed: int) -> str:
    latent = torch.full((1, 16, 2, 2, 2), float(seed))
    return bank.add(latent, latent_format="wan21", extra=story_extra(story, shot, cut), seed=seed,
                    keyframes=torch.full((2, 4, 4, 3), 0.5))


def test_shots_in_story_order_newest_per_index_and_only_before_the_current_shot(tmp_path):
    bank = MemoryBank.open(tmp_path / "bank", create=True)
    first = _add(bank, "tale", 0, True, 1)
    _add(bank, "other", 0, True, 2)
    old_second = _add(bank, "tale", 1, False, 3)
    third = _add(bank, "tale", 2, False, 4)
    new_second = _add(bank, "tale", 1, True, 5)  # shot 1 generated again: it replaces the older one
    bank.add(torch.zeros(1, 16, 2, 2, 2), latent_format="wan21")  # not a story shot

    ids = [e.entry_id for e in story_shots(bank.entries(), "tale")]
    assert ids == [first, new_second, third] and old_second not in ids
    assert [e.entry_id for e in story_shots(bank.entries(), "tale", before=2)] == [first, new_second]
    assert story_shots(bank.entries(), "tale", before=0) == []
    assert [e.entry_id for e in story_shots(bank.entries(), "tale", before=-1)] == ids
    assert shot_of(bank.entry(new_second)) == ("tale", 1, True)
    assert next_shot_index(bank.entries(), "tale") == 3 and next_shot_index(bank.entries(), "new") == 0
    reopened = MemoryBank.open(tmp_path / "bank")  # the fields survive the manifest
    assert [e.entry_id for e in story_shots(reopened.entries(), " tale ")] == ids


@pytest.mark.parametrize("args, match", [(("", 0, True), "story_id"), (("tale", -1, True), "shot_index"),
                                         (("tale", True, True), "shot_index")])
def test_bad_story_fields_name_the_input(args, match):
    with pytest.raises(ValueError, match=match):
        story_extra(*args)
