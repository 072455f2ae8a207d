"""StoryMem story scripts: flattened into shots with the official pipeline's modes; malformed scripts are refused with
the field and the fix."""

from __future__ import annotations

import json

import pytest

from memv2v_core.story import StoryScriptError, parse_story_script

# The shape of StoryMem's ST-Bench scripts (neo.json: 4 scenes x 3 shots, cut [T,F,F], [T,T,F], [T,F,F], [T,F,T]).
CUTS = [[True, False, False], [True, True, False], [True, False, False], [True, False, True]]
SCRIPT = {
    "story_name": "neo",
    "story_overview": "A hacker learns the world is a simulation.",
    "scenes": [{"scene_num": s + 1,
                "video_prompts": [f"scene {s + 1} shot {i + 1}" for i in range(3)],
                "first_frame_prompt": [f"first frame {s + 1}.{i + 1}" for i in range(3)],
                "cut": cuts} for s, cuts in enumerate(CUTS)],
}


@pytest.mark.parametrize("continuation, frames", [("MI2V", 1), ("MM2V", 5)])
def test_shots_follow_the_official_rules(continuation, frames):
    story = parse_story_script(SCRIPT, continuation=continuation)
    assert story.name == "neo" and story.overview.startswith("A hacker") and len(story) == 12
    assert [s.index for s in story.shots] == list(range(12))
    assert [(s.scene_index, s.shot_index) for s in story.shots] == [(a, b) for a in range(4) for b in range(3)]
    flat = [c for cuts in CUTS for c in cuts]
    assert [s.cut for s in story.shots] == flat
    # pipeline.py L252-259: continued (cut false) shots use the chosen LoRA's mode, the others memory only
    assert [s.mode for s in story.shots] == ["cut" if c else continuation for c in flat]
    assert [s.condition_pixel_frames for s in story.shots] == [0 if c else frames for c in flat]
    assert story.shots[4].prompt == "scene 2 shot 2" and story.shots[4].scene_num == 2
    assert story.shots[4].first_frame_prompt == "first frame 2.2" and story.warnings == ()


def test_continuation_none_makes_every_shot_a_cut():
    story = parse_story_script(SCRIPT, continuation="none")
    assert {s.mode for s in story.shots} == {"cut"} and {s.condition_pixel_frames for s in story.shots} == {0}


def test_text_paths_and_readme_style_flags(tmp_path):
    script = json.loads(json.dumps(SCRIPT))
    script["scenes"][0]["cut"] = ["True", "false", "FALSE"]  # the README's prose spells them as text
    path = tmp_path / "neo.json"
    path.write_text(json.dumps(script))
    for source in (path, str(path), json.dumps(script)):
        story = parse_story_script(source)
        assert [s.cut for s in story.shots[:3]] == [True, False, False]


def test_a_first_shot_that_continues_nothing_is_a_cut_with_a_warning():
    script = {"scenes": [{"video_prompts": ["a", "b"], "cut": [False, False]}]}
    story = parse_story_script(script)
    assert [s.mode for s in story.shots] == ["cut", "MI2V"]
    assert "first shot has no previous shot" in story.warnings[0]
    assert story.name is None and story.shots[0].scene_num == 1 and story.shots[0].first_frame_prompt is None


def test_first_frame_prompts_of_another_length_only_warn():
    script = {"scenes": [{"video_prompts": ["a", "b"], "cut": [True, False], "first_frame_prompt": ["x"]}]}
    story = parse_story_script(script)
    assert "first_frame_prompt has 1 entries for 2 shots" in story.warnings[0]
    assert story.shots[1].first_frame_prompt is None


@pytest.mark.parametrize("script, words", [
    ("[1, 2]", ["JSON object", "got list"]),
    ({"story_name": "x"}, ['no "scenes"', '"scenes": [{"video_prompts"']),
    ({"scenes": []}, ['"scenes" must be a non-empty list']),
    ({"scenes": ["shot"]}, ["scenes[0] must be an object"]),
    ({"scenes": [{"cut": [True]}]}, ['scenes[0] has no "video_prompts"', "one text prompt per shot"]),
    ({"scenes": [{"video_prompts": "a", "cut": [True]}]}, ["scenes[0].video_prompts must be a non-empty list"]),
    ({"scenes": [{"video_prompts": ["a", " "], "cut": [True, True]}]}, ["scenes[0].video_prompts[1]"]),
    ({"scenes": [{"video_prompts": ["a"], "cut": [True]}, {"video_prompts": ["b", "c"]}]},
     ['scenes[1] has no "cut"', "2 booleans aligned with video_prompts", "false = continue"]),
    ({"scenes": [{"video_prompts": ["a", "b"], "cut": [True]}]}, ["scenes[0].cut must be a list of 2 booleans"]),
    ({"scenes": [{"video_prompts": ["a", "b"], "cut": [True, "no"]}]}, ["scenes[0].cut[1] must be true or false"]),
    ({"scenes": [{"video_prompts": ["a"], "cut": [True], "first_frame_prompt": "x"}]},
     ["scenes[0].first_frame_prompt must be a list of texts"]),
    ({"story_overview": 3, "scenes": [{"video_prompts": ["a"], "cut": [True]}]}, ['"story_overview" must be a text']),
])
def test_malformed_scripts_name_the_field_and_the_fix(script, words):
    with pytest.raises(StoryScriptError) as error:
        parse_story_script(script)
    for word in words:
        assert word in str(error.value)


def test_bad_json_text_files_and_options_are_refused(tmp_path):
    with pytest.raises(StoryScriptError, match=r"not valid JSON \(line 2, column"):
        parse_story_script('{"scenes": [\n  {"video_prompts": ["a"],}]}')
    with pytest.raises(StoryScriptError, match="neither JSON text nor an existing file"):
        parse_story_script(str(tmp_path / "missing.json"))
    with pytest.raises(StoryScriptError, match=r"continuation \('I2V'\)"):
        parse_story_script(SCRIPT, continuation="I2V")
    with pytest.raises(StoryScriptError, match="got int"):
        parse_story_script(3)
    assert issubclass(StoryScriptError, ValueError)
