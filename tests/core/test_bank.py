"""The memory bank: contract, persistence, duplicates, caches, copies, and bad input that must never cost an entry."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from memv2v_core.bank.memory_bank import (BankFormatError, DamagedEntryError, MemoryBank, MemoryEntry, UnknownEntryError,
                              check_latent_format, latent_format_for_channels, normalize_latent_format, read_revision,
                              safe_bank_dir)
from memv2v_core.bank.contact_sheet import LatentPreview, contact_sheet, latent_to_rgb


def latent(seed: int, shape=(1, 16, 3, 6, 8), dtype=torch.float32) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=generator).to(dtype)


def trajectory(frames: int = 5) -> torch.Tensor:
    c2w = torch.eye(4).repeat(frames, 1, 1)
    c2w[:, 0, 3] = torch.linspace(0, 1, frames)
    return c2w


@pytest.fixture
def bank(tmp_path) -> MemoryBank:
    return MemoryBank.open(tmp_path / "scene", create=True)


def entry_files(bank: MemoryBank) -> list[Path]:
    return sorted((bank.path / "entries").glob("*.safetensors"))


def first_record_line(bank: MemoryBank, index: int) -> dict:
    return json.loads((bank.path / "manifest.json").read_text())["entries"][index]


# ---------------------------------------------------------------------------------------------------------------
# Opening and the basic contract

def test_open_missing_folder_without_create_says_how_to_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="create=True"):
        MemoryBank.open(tmp_path / "nope")
    assert not (tmp_path / "nope").exists()


def test_new_bank_is_empty_and_has_a_versioned_manifest(bank):
    assert len(bank) == 0 and bank.ids() == [] and bank.problems == []
    manifest = json.loads((bank.path / "manifest.json").read_text())
    assert manifest["format"] == "memv2v-bank" and manifest["schema_version"] == 1 and manifest["entries"] == []


def test_add_and_load_round_trip_every_tensor_bit_exact(bank):
    lat = latent(1)
    tensors = dict(camera=trajectory(5), intrinsics=torch.tensor([[500.0, 0, 416], [0, 500.0, 240], [0, 0, 1]]),
                   fov_mask=torch.randint(0, 256, (8100,), dtype=torch.uint8), descriptor=torch.randn(768),
                   keyframes=torch.rand(2, 12, 16, 3))
    entry_id = bank.add(lat, latent_format="wan21", prompt="orbit the statue", seed=7, segment_index=3,
                        source_id="clip.mp4", parents=(), sampler={"sampler": "uni_pc", "steps": 30},
                        model="WAN21_T2V", extra={"note": "first"}, **tensors)
    assert torch.equal(bank.load_latent(entry_id), lat)
    for name, value in tensors.items():
        loaded = bank.load_tensor(entry_id, name)
        assert loaded.dtype == value.dtype and torch.equal(loaded, value), name
    entry = bank.entry(entry_id)
    assert isinstance(entry, MemoryEntry)
    assert (entry.latent_format, entry.latent_shape, entry.prompt, entry.seed, entry.segment_index,
            entry.source_id, entry.model, entry.turn) == ("wan21", (1, 16, 3, 6, 8), "orbit the statue", 7, 3,
                                                         "clip.mp4", "WAN21_T2V", 1)
    assert set(entry.tensors) == {"latent", *tensors} and entry.sampler == {"sampler": "uni_pc", "steps": 30}
    assert entry.shapes["camera"] == (5, 4, 4) and entry.extra == {"note": "first"} and entry.created


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_latent_dtype_and_shape_are_stored_as_given(bank, dtype):
    lat = latent(2, shape=(16, 2, 4, 4), dtype=dtype)
    entry_id = bank.add(lat, latent_format="wan21")
    loaded = bank.load_latent(entry_id)
    assert loaded.dtype == dtype and loaded.shape == lat.shape and torch.equal(loaded, lat)


def test_ids_keep_insertion_order_and_turns_count_up(bank):
    ids = [bank.add(latent(i), latent_format="wan21", prompt=f"turn {i}") for i in range(4)]
    explicit = bank.add(latent(10), latent_format="wan21", turn=9)
    assert bank.ids() == ids + [explicit] and len(bank) == 5
    assert [bank.entry(i).turn for i in bank.ids()] == [1, 2, 3, 4, 9]
    assert bank.entry(bank.add(latent(11), latent_format="wan21")).turn == 10


def test_parents_record_provenance(bank):
    first = bank.add(latent(1), latent_format="wan21")
    second = bank.add(latent(2), latent_format="wan21", parents=[first])
    assert bank.entry(second).parents == (first,)


def test_unknown_entry_and_absent_tensor(bank):
    entry_id = bank.add(latent(1), latent_format="wan21")
    with pytest.raises(KeyError, match="no entry 'feedface'") as info:
        bank.entry("feedface")
    assert isinstance(info.value, UnknownEntryError)
    assert bank.load_tensor(entry_id, "camera") is None
    with pytest.raises(KeyError):
        bank.load_latent("feedface")


def test_entries_persist_and_other_objects_see_them_after_refresh(bank):
    other = MemoryBank.open(bank.path)
    entry_id = bank.add(latent(3), latent_format="wan21", prompt="persisted")
    assert entry_id not in other
    other.refresh()
    assert other.ids() == [entry_id] and other.entry(entry_id).prompt == "persisted"
    reopened = MemoryBank.open(bank.path)
    assert torch.equal(reopened.load_latent(entry_id), latent(3))


def test_entry_file_is_plain_safetensors(bank):
    entry_id = bank.add(latent(4), latent_format="wan21", camera=trajectory())
    tensors = load_file(str(bank.entry_file(entry_id)))
    assert set(tensors) == {"latent", "camera"} and torch.equal(tensors["latent"], latent(4))


def test_revision_changes_with_content_only(bank):
    empty = bank.revision()
    entry_id = bank.add(latent(1), latent_format="wan21")
    after_add = bank.revision()
    assert after_add != empty and read_revision(bank.path) == after_add
    bank.add(latent(1), latent_format="wan21")  # a duplicate changes nothing
    bank.put_cache(entry_id, "fov_mask@radius=2", torch.zeros(10, dtype=torch.uint8))
    assert bank.revision() == after_add
    assert read_revision(bank.path.parent / "never-made") == "missing"


# ---------------------------------------------------------------------------------------------------------------
# Duplicates

def test_identical_add_returns_existing_id_and_stores_once(bank):
    kwargs = dict(latent_format="wan21", camera=trajectory(), prompt="same", seed=1, sampler={"cfg": 5.0})
    first = bank.add(latent(5), **kwargs)
    bank.add(latent(6), latent_format="wan21")
    again = bank.add(latent(5), **kwargs)
    assert again == first and len(bank) == 2 and len(entry_files(bank)) == 2


def test_different_metadata_or_data_is_a_different_entry(bank):
    base = bank.add(latent(5), latent_format="wan21", prompt="a")
    assert bank.add(latent(5), latent_format="wan21", prompt="b") != base
    changed = latent(5)
    changed[0, 0, 0, 0, 0] += 1e-3
    assert bank.add(changed, latent_format="wan21", prompt="a") != base
    assert len(bank) == 3


# ---------------------------------------------------------------------------------------------------------------
# Input validation

@pytest.mark.parametrize("kwargs, message", [
    (dict(latent=latent(1, shape=(1, 48, 2, 4, 4)), latent_format="wan21"), "48 channels"),
    (dict(latent=torch.full((1, 16, 2, 4, 4), float("nan")), latent_format="wan21"), "NaN"),
    (dict(latent=torch.zeros(16, 4, 4), latent_format="wan21"), "latent has shape"),
    (dict(latent=torch.zeros(1, 16, 2, 4, 4, dtype=torch.int32), latent_format="wan21"), "float"),
    (dict(latent="not a tensor", latent_format="wan21"), "torch.Tensor"),
    (dict(latent=latent(1), latent_format="wan 21!"), "not a format name"),
    (dict(latent=latent(1), latent_format="wan21", camera=torch.zeros(5, 3, 4)), "camera has shape"),
    (dict(latent=latent(1), latent_format="wan21", camera=trajectory(5), intrinsics=torch.eye(3).repeat(4, 1, 1)),
     "intrinsics"),
    (dict(latent=latent(1), latent_format="wan21", fov_mask=torch.zeros(10)), "uint8"),
    (dict(latent=latent(1), latent_format="wan21", keyframes=torch.full((1, 4, 4, 3), 2.0)), "0..1"),
    (dict(latent=latent(1), latent_format="wan21", descriptor=torch.zeros(2, 8)), "descriptor"),
    (dict(latent=latent(1), latent_format="wan21", sampler={"cfg": float("nan")}), "sampler"),
    (dict(latent=latent(1), latent_format="wan21", extra={"x": object()}), "extra"),
    (dict(latent=latent(1), latent_format="wan21", seed=True), "seed"),
    (dict(latent=latent(1), latent_format="wan21", parents="abc"), "parents"),
    (dict(latent=latent(1), latent_format="wan21", turn=-1), "turn"),
])
def test_bad_add_arguments_are_refused_with_the_field_named(bank, kwargs, message):
    with pytest.raises(ValueError, match=message):
        bank.add(**kwargs)
    assert len(bank) == 0 and entry_files(bank) == []


def test_unknown_latent_formats_are_accepted_generically(bank):
    entry_id = bank.add(latent(1, shape=(1, 4, 2, 3, 3)), latent_format="MyVAE")
    assert bank.entry(entry_id).latent_format == "myvae"


def test_bank_holds_one_latent_format(bank):
    bank.add(latent(1), latent_format="wan21")
    with pytest.raises(ValueError, match="holds 'wan21'"):
        bank.add(latent(2, shape=(1, 48, 2, 4, 4)), latent_format="wan22")
    assert bank.latent_format == "wan21"


def test_check_latent_format_names_both_formats(bank):
    entry = bank.entry(bank.add(latent(1), latent_format="wan21"))
    check_latent_format(entry, "Wan21", "ApplyMemory")
    check_latent_format("wan22", "wan22", "x")
    with pytest.raises(ValueError, match=r"ApplyMemory: .*'wan21'.*'wan22'") as info:
        check_latent_format(entry, "Wan22", "ApplyMemory")
    assert entry.entry_id in str(info.value)
    assert normalize_latent_format("Wan22") == "wan22"
    assert latent_format_for_channels(16) == "wan21" and latent_format_for_channels(48) == "wan22"
    assert latent_format_for_channels(4) is None


# ---------------------------------------------------------------------------------------------------------------
# Bank names

@pytest.mark.parametrize("name", ["..", ".", "../escape", "a/b", "a\\b", "/etc", "C:\\x", "nul\0byte", "CON", "nul",
                                  "Com1", "LPT9.txt", "aux.bank", "x" * 65, "", " lead", "trail ", "dot.", ".hidden",
                                  "a:b", "what?", "new\nline"])
def test_unsafe_bank_names_are_refused_and_nothing_is_created(tmp_path, name):
    root = tmp_path / "banks"
    root.mkdir()
    with pytest.raises(ValueError, match="refused"):
        safe_bank_dir(root, name)
    assert list(root.iterdir()) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["banks"]


@pytest.mark.parametrize("name", ["default", "scene 1", "my_scene-2.v3", "Küche", "x" * 64])
def test_plain_bank_names_resolve_inside_the_root(tmp_path, name):
    assert safe_bank_dir(tmp_path, name) == tmp_path.resolve() / name
    assert list(tmp_path.iterdir()) == []


def test_a_link_leading_out_of_the_root_is_refused(tmp_path):
    root, outside = tmp_path / "banks", tmp_path / "elsewhere"
    root.mkdir(), outside.mkdir()
    (root / "sneaky").symlink_to(outside)
    with pytest.raises(ValueError, match="outside the banks folder"):
        safe_bank_dir(root, "sneaky")


# ---------------------------------------------------------------------------------------------------------------
# Damage: reported by name, skipped, never deleted or overwritten; the rest keeps working

def test_truncated_entry_is_reported_and_skipped_and_left_alone(bank):
    good, bad = bank.add(latent(1), latent_format="wan21"), bank.add(latent(2), latent_format="wan21")
    path = bank.entry_file(bad)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    reopened = MemoryBank.open(bank.path)
    assert reopened.ids() == [good]
    assert len(reopened.problems) == 1 and bad in reopened.problems[0] and path.name in reopened.problems[0]
    assert "truncated" in reopened.problems[0]
    with pytest.raises(DamagedEntryError, match="truncated"):
        reopened.entry(bad)
    assert torch.equal(reopened.load_latent(good), latent(1))
    added = reopened.add(latent(3), latent_format="wan21")
    assert reopened.ids() == [good, added] and path.read_bytes() == data[: len(data) // 2]
    assert first_record_line(reopened, 1)["id"] == bad  # the damaged record stays in the manifest


def test_shape_that_disagrees_with_the_manifest_is_caught_on_read_and_by_verify(bank):
    good, bad = bank.add(latent(1), latent_format="wan21"), bank.add(latent(2), latent_format="wan21")
    manifest = bank.path / "manifest.json"
    data = json.loads(manifest.read_text())
    data["entries"][1]["tensors"]["latent"]["shape"] = [1, 16, 3, 6, 9]
    manifest.write_text(json.dumps(data))
    reopened = MemoryBank.open(bank.path)
    with pytest.raises(DamagedEntryError, match=r"disagree.*\(1, 16, 3, 6, 9\)") as info:
        reopened.load_latent(bad)
    assert bank.entry_file(bad).name in str(info.value)
    assert reopened.ids() == [good] and torch.equal(reopened.load_latent(good), latent(1))
    fresh = MemoryBank.open(bank.path)
    problems = fresh.verify()
    assert len(problems) == 1 and bad in problems[0] and fresh.ids() == [good]


def test_entry_file_from_a_future_schema_is_reported(bank):
    good, bad = bank.add(latent(1), latent_format="wan21"), bank.add(latent(2), latent_format="wan21")
    path = bank.entry_file(bad)
    data = path.read_bytes()
    patched = data.replace(b'"memv2v.schema_version":"1"', b'"memv2v.schema_version":"9"')
    assert patched != data and len(patched) == len(data)
    path.write_bytes(patched)
    reopened = MemoryBank.open(bank.path)
    with pytest.raises(DamagedEntryError, match="entry schema '9'"):
        reopened.load_latent(bad)
    assert reopened.ids() == [good] and path.read_bytes() == patched


def test_missing_entry_file_and_malformed_record_are_reported(bank):
    good, gone = bank.add(latent(1), latent_format="wan21"), bank.add(latent(2), latent_format="wan21")
    bank.entry_file(gone).rename(bank.path / "moved-away.safetensors")
    manifest = bank.path / "manifest.json"
    manifest.write_text(manifest.read_text().replace('"entries": [\n', '"entries": [\n"garbage record",\n'))
    reopened = MemoryBank.open(bank.path)
    assert reopened.ids() == [good]
    problems = "\n".join(reopened.problems)
    assert "file is missing" in problems and gone in problems and "entry #0 is unusable" in problems
    reopened.add(latent(3), latent_format="wan21")
    assert json.loads(manifest.read_text())["entries"][0] == "garbage record"  # kept for a human to inspect


def test_garbage_manifest_is_a_clear_error_and_recover_rebuilds_it(bank):
    ids = [bank.add(latent(i), latent_format="wan21", prompt=f"p{i}", camera=trajectory()) for i in range(3)]
    manifest = bank.path / "manifest.json"
    manifest.write_bytes(b"\x00{not json")
    with pytest.raises(BankFormatError, match="not valid JSON") as info:
        MemoryBank.open(bank.path)
    assert str(manifest) in str(info.value) and "recover" in str(info.value)
    assert manifest.read_bytes() == b"\x00{not json" and len(entry_files(bank)) == 3
    recovered = MemoryBank.recover(bank.path)
    assert recovered.ids() == ids and recovered.problems == []
    assert [recovered.entry(i).prompt for i in ids] == ["p0", "p1", "p2"]
    assert torch.equal(recovered.load_tensor(ids[2], "camera"), trajectory())
    kept = list(bank.path.glob("manifest.damaged-*.json"))
    assert len(kept) == 1 and kept[0].read_bytes() == b"\x00{not json"


def test_manifest_from_a_newer_version_is_refused_unchanged(bank):
    bank.add(latent(1), latent_format="wan21")
    manifest = bank.path / "manifest.json"
    data = json.loads(manifest.read_text())
    data["schema_version"] = 2
    manifest.write_text(json.dumps(data))
    before = manifest.read_bytes()
    with pytest.raises(BankFormatError, match="newer Memory-V2V.*schema 2.*Update"):
        MemoryBank.open(bank.path)
    with pytest.raises(BankFormatError):
        bank.add(latent(2), latent_format="wan21")
    assert manifest.read_bytes() == before and len(entry_files(bank)) == 1


def test_missing_manifest_with_entries_asks_for_recovery(bank):
    entry_id = bank.add(latent(1), latent_format="wan21")
    (bank.path / "manifest.json").unlink()
    with pytest.raises(BankFormatError, match="recover"):
        MemoryBank.open(bank.path, create=True)
    assert MemoryBank.recover(bank.path).ids() == [entry_id]


def test_re_adding_content_whose_file_is_damaged_keeps_the_old_file(bank):
    entry_id = bank.add(latent(1), latent_format="wan21")
    old = bank.entry_file(entry_id)
    old.write_bytes(b"broken")
    reopened = MemoryBank.open(bank.path)
    assert reopened.ids() == []
    assert reopened.add(latent(1), latent_format="wan21") == entry_id
    assert reopened.entry_file(entry_id) != old and old.read_bytes() == b"broken"
    assert torch.equal(MemoryBank.open(bank.path).load_latent(entry_id), latent(1))


def test_deep_verify_finds_flipped_bits(bank):
    good, bad = bank.add(latent(1), latent_format="wan21"), bank.add(latent(2), latent_format="wan21")
    path = bank.entry_file(bad)
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x01
    path.write_bytes(bytes(data))
    assert MemoryBank.open(bank.path).verify() == []  # structure is intact
    checked = MemoryBank.open(bank.path)
    problems = checked.verify(deep=True)
    assert len(problems) == 1 and "checksum" in problems[0] and checked.ids() == [good]


def test_unreferenced_files_from_interrupted_adds_are_listed_not_shown(bank):
    entry_id = bank.add(latent(1), latent_format="wan21")
    orphan = bank.path / "entries" / ("ab" * 8 + ".safetensors")
    orphan.write_bytes(bank.entry_file(entry_id).read_bytes())
    reopened = MemoryBank.open(bank.path)
    assert reopened.ids() == [entry_id] and reopened.verify() == []
    assert reopened.unreferenced_files() == [orphan]


# ---------------------------------------------------------------------------------------------------------------
# Caches, copies, threads

def test_put_cache_adds_derived_tensors_without_touching_the_entry(bank):
    entry_id = bank.add(latent(1), latent_format="wan21", camera=trajectory())
    before = bank.entry_file(entry_id).read_bytes()
    mask = torch.randint(0, 256, (8100,), dtype=torch.uint8)
    bank.put_cache(entry_id, "fov_mask", mask)
    bank.put_cache(entry_id, "fov_mask:r=2.0,832x480", mask.flip(0))
    reopened = MemoryBank.open(bank.path)
    assert torch.equal(reopened.load_tensor(entry_id, "fov_mask"), mask)
    assert torch.equal(reopened.load_tensor(entry_id, "fov_mask:r=2.0,832x480"), mask.flip(0))
    assert reopened.load_tensor(entry_id, "fov_mask:other") is None
    assert bank.entry_file(entry_id).read_bytes() == before
    with pytest.raises(ValueError, match="original data"):
        bank.put_cache(entry_id, "camera", trajectory())
    with pytest.raises(KeyError):
        bank.put_cache("0" * 16, "fov_mask", mask)


def test_unreadable_cache_counts_as_absent(bank):
    entry_id = bank.add(latent(1), latent_format="wan21")
    bank.put_cache(entry_id, "fov_mask", torch.ones(4, dtype=torch.uint8))
    next((bank.path / "cache" / entry_id).glob("*.safetensors")).write_bytes(b"junk")
    assert bank.load_tensor(entry_id, "fov_mask") is None
    bank.put_cache(entry_id, "fov_mask", torch.ones(4, dtype=torch.uint8))
    assert torch.equal(bank.load_tensor(entry_id, "fov_mask"), torch.ones(4, dtype=torch.uint8))


def test_export_writes_a_consistent_copy_of_healthy_entries(bank, tmp_path):
    ids = [bank.add(latent(i), latent_format="wan21", prompt=str(i)) for i in range(3)]
    bank.put_cache(ids[0], "fov_mask", torch.ones(4, dtype=torch.uint8))
    bank.entry_file(ids[1]).write_bytes(b"broken")
    bank.refresh()
    copy = bank.export(tmp_path / "copy")
    assert copy.ids() == [ids[0], ids[2]] and copy.problems == []
    assert torch.equal(copy.load_latent(ids[2]), latent(2)) and copy.entry(ids[2]).prompt == "2"
    assert torch.equal(copy.load_tensor(ids[0], "fov_mask"), torch.ones(4, dtype=torch.uint8))
    with pytest.raises(FileExistsError, match="not empty"):
        bank.export(tmp_path / "copy")


def test_threads_adding_through_separate_objects_lose_nothing(bank):
    banks = [MemoryBank.open(bank.path) for _ in range(2)]
    added: list[list[str]] = [[], []]

    def work(which: int) -> None:
        for i in range(15):
            added[which].append(banks[which].add(latent(100 * which + i), latent_format="wan21"))

    threads = [threading.Thread(target=work, args=(n,)) for n in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    final = MemoryBank.open(bank.path)
    assert len(final) == 30 and set(final.ids()) == set(added[0]) | set(added[1])
    assert not os.listdir(bank.path / ".tmp")


# ---------------------------------------------------------------------------------------------------------------
# Contact sheet

def test_latent_to_rgb_applies_normalisation_then_linear_factors():
    channels = 16
    factors = torch.randn(channels, 3) * 0.1
    bias, mean, std = torch.tensor([0.1, -0.2, 0.05]), torch.randn(channels), torch.rand(channels) + 0.5
    preview = LatentPreview.from_values(factors.tolist(), bias.tolist(), mean.view(1, channels, 1, 1, 1),
                                        std.view(1, channels, 1, 1, 1))
    lat = latent(3, shape=(1, channels, 2, 4, 5))
    model_space = (lat[0] - mean.view(-1, 1, 1, 1)) / std.view(-1, 1, 1, 1)
    expected = ((torch.einsum("cthw,cr->thwr", model_space, factors) + bias + 1) / 2).clamp(0, 1)
    rgb = latent_to_rgb(lat, preview)
    assert rgb.shape == (2, 4, 5, 3) and torch.allclose(rgb, expected, atol=1e-6)
    generic = latent_to_rgb(lat)  # no factors: false colour, still an image
    assert generic.shape == (2, 4, 5, 3) and 0 <= generic.min() and generic.max() <= 1


def test_contact_sheet_has_one_numbered_row_per_entry_and_a_matching_table(bank):
    plain = bank.add(latent(1, shape=(1, 16, 5, 12, 20)), latent_format="wan21", prompt="first turn", seed=11,
                     camera=trajectory(9))
    keyed = bank.add(latent(2, shape=(1, 16, 5, 12, 20)), latent_format="wan21", parents=[plain],
                     keyframes=torch.ones(2, 24, 40, 3))
    sheet = contact_sheet(bank, {"wan21": LatentPreview.from_values(torch.full((16, 3), 0.05))}, frames=3,
                          thumb_height=24)
    image = sheet.image
    assert image.ndim == 4 and image.shape[0] == 1 and image.shape[-1] == 3 and 0 <= image.min() <= image.max() <= 1
    assert image.shape[1] == 4 + 2 * (24 + 4) and sheet.entry_ids == (plain, keyed)
    lines = sheet.table.splitlines()
    assert "2 entries" in lines[0] and lines[1].split()[:2] == ["#", "id"]
    assert lines[2].split()[:3] == ["1", plain, "1"] and "first turn" in lines[2] and "9 fr" in lines[2]
    assert lines[3].split()[:3] == ["2", keyed, "2"] and "keyframes" in lines[3] and plain[:8] in lines[3]
    second_row = image[0, 4 + 28: 4 + 28 + 24]
    assert torch.isclose(second_row.amax(), torch.tensor(1.0))  # the white keyframes are drawn


def test_contact_sheet_shows_newest_rows_and_lists_damage(bank):
    ids = [bank.add(latent(i), latent_format="wan21") for i in range(5)]
    path = bank.entry_file(ids[4])
    path.write_bytes(path.read_bytes()[:-10])
    bank.refresh()
    sheet = contact_sheet(bank, max_entries=2, frames=2, thumb_height=16)
    assert sheet.entry_ids == tuple(ids[2:4])
    assert "rows 3-4 shown" in sheet.table and "1 damaged" in sheet.table and path.name in sheet.table


def test_contact_sheet_of_an_empty_bank(bank):
    sheet = contact_sheet(bank)
    assert sheet.image.shape[0] == 1 and sheet.entry_ids == () and "is empty" in sheet.table


def test_recover_on_a_readable_manifest_keeps_its_records_and_adopts_complete_orphans(bank):
    ids = [bank.add(latent(i), latent_format="wan21") for i in range(2)]
    bank.entry_file(ids[1]).write_bytes(b"broken")
    other = MemoryBank.open(bank.path.parent / "other", create=True)
    orphan_id = other.add(latent(9), latent_format="wan21")
    (bank.path / "entries" / other.entry_file(orphan_id).name).write_bytes(other.entry_file(orphan_id).read_bytes())
    recovered = MemoryBank.recover(bank.path)
    assert recovered.ids() == [ids[0], orphan_id] and len(recovered.problems) == 1
    assert [r["id"] for r in json.loads((bank.path / "manifest.json").read_text())["entries"]] == [*ids, orphan_id]


def test_copies_share_the_handle_and_pickles_reopen_the_folder(bank):
    import copy
    import pickle

    entry_id = bank.add(latent(1), latent_format="wan21")
    assert copy.deepcopy({"bank": bank})["bank"] is bank and copy.copy(bank) is bank
    restored = pickle.loads(pickle.dumps(bank))
    assert restored is not bank and restored.path == bank.path and restored.ids() == [entry_id]


def test_entry_files_swapped_on_disk_are_caught_on_read(bank):
    first, second = bank.add(latent(1), latent_format="wan21"), bank.add(latent(2), latent_format="wan21")
    a, b = bank.entry_file(first), bank.entry_file(second)
    data_a, data_b = a.read_bytes(), b.read_bytes()
    assert len(data_a) == len(data_b)
    a.write_bytes(data_b)
    b.write_bytes(data_a)
    reopened = MemoryBank.open(bank.path)
    with pytest.raises(DamagedEntryError, match="written by another add"):
        reopened.load_latent(first)
    assert len(reopened.verify()) == 2 and reopened.ids() == []
