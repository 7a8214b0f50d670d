"""Memory JSON export (round trip, validation errors) and the HTML report (content, escaping,
plots, missing metrics)."""

from __future__ import annotations

import html
import json

import jax
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pmd_jax import memory as mem
from pmd_jax.memory import report
from pmd_jax.memory.export import (
    load_memory_json,
    memory_from_json,
    memory_to_json,
    save_memory_json,
)

CONFIG = mem.MemoryConfig(
    num_problems=4,
    success_slots=2,
    failure_slots=2,
    insight_slots=3,
    behaviour_slots=6,
    response_len=64,
    feedback_len=64,
    title_len=16,
    content_len=64,
    name_len=24,
    instruction_len=96,
    embed_dim=32,
)
PROBLEMS = ["What is 3 + 4?", "What is 12 - 5?", "unused", "What is 6 * 7?"]
# (problem id, reward, response, feedback)
ROLLOUTS = [
    (0, 1.0, "3 + 4 = 7\n#### 7", "correct"),
    (0, 0.0, "3 + 4 = 8\n#### 8", "wrong answer: expected 7, got 8"),
    (1, 1.0, "12 - 5 = 7\n#### 7", "correct"),
    (3, 0.0, "6 * 7 = 36  (two spaces)\n#### 36", "wrong answer: expected 42, got 36"),
]
# (problem id, kind, title, content)
INSIGHTS = [
    (0, mem.STRATEGY, "Add digit by digit", "Line up the units before adding."),
    (0, mem.LESSON, "Check the sum", "Recount the total before writing the answer."),
    (3, mem.LESSON, "Tables", "Recall 6 * 7 = 42 from the times table."),
]
# (name, instruction, cluster)
BEHAVIOURS = [
    ("check units", "Re-read the question and check the units of the answer.", 0),
    ("<script>", "<b>alert('x')</b> & escape me", 1),
]


def _unit_vectors(rng: np.random.Generator, count: int) -> np.ndarray:
    vectors = rng.normal(size=(count, CONFIG.embed_dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def _encode(tokenizer, texts, width):
    return mem.pad_ids([tokenizer.encode(t) for t in texts], width, CONFIG.pad_id)


@pytest.fixture(scope="module")
def memory_state(arith_tokenizer) -> mem.MemoryState:
    """A memory holding ROLLOUTS, INSIGHTS and BEHAVIOURS, inserted with the jit'd ops."""
    rng = np.random.default_rng(0)
    tok = arith_tokenizer
    state = mem.init_memory(CONFIG)
    responses, response_lens = _encode(tok, [r[2] for r in ROLLOUTS], CONFIG.response_len)
    feedback, feedback_lens = _encode(tok, [r[3] for r in ROLLOUTS], CONFIG.feedback_len)
    state, outcome = mem.insert_experience_batch(
        state, CONFIG, np.array([r[0] for r in ROLLOUTS]), responses, response_lens,
        np.array([r[1] for r in ROLLOUTS]), feedback, feedback_lens,
        _unit_vectors(rng, len(ROLLOUTS)), 3,
    )  # fmt: skip
    assert np.all(np.asarray(outcome.status) == mem.INSERTED)
    titles, title_lens = _encode(tok, [i[2] for i in INSIGHTS], CONFIG.title_len)
    contents, content_lens = _encode(tok, [i[3] for i in INSIGHTS], CONFIG.content_len)
    state, outcome = mem.insert_insights(
        state, CONFIG, np.array([i[0] for i in INSIGHTS]), np.array([i[1] for i in INSIGHTS]),
        titles, title_lens, contents, content_lens, _unit_vectors(rng, len(INSIGHTS)), 4,
    )  # fmt: skip
    assert np.all(np.asarray(outcome.status) == mem.INSERTED)
    names, name_lens = _encode(tok, [b[0] for b in BEHAVIOURS], CONFIG.name_len)
    instructions, instruction_lens = _encode(
        tok, [b[1] for b in BEHAVIOURS], CONFIG.instruction_len
    )
    actions = mem.BehaviourActions(
        op=np.full(len(BEHAVIOURS), mem.NEW), name=names, name_len=name_lens,
        instruction=instructions, instruction_len=instruction_lens,
        embedding=_unit_vectors(rng, len(BEHAVIOURS)),
        source_cluster=np.array([b[2] for b in BEHAVIOURS]),
    )  # fmt: skip
    state, outcome = mem.apply_behaviour_actions(state, CONFIG, actions, 5)
    assert np.all(np.asarray(outcome.status) == mem.INSERTED)
    return state


def _assert_states_equal(got: mem.MemoryState, want: mem.MemoryState) -> None:
    for (path, got_leaf), want_leaf in zip(
        jax.tree_util.tree_leaves_with_path(got), jax.tree.leaves(want), strict=True
    ):
        np.testing.assert_array_equal(got_leaf, want_leaf, err_msg=jax.tree_util.keystr(path))


def test_export_lists_every_item_with_decoded_text(memory_state, arith_tokenizer):
    data = memory_to_json(memory_state, CONFIG, arith_tokenizer, step=7, problem_texts=PROBLEMS)
    assert data["step"] == 7 and data["sizes"]["behaviours"] == 2
    assert [(e["problem_id"], e["kind"], e["response"], e["feedback"]) for e in data["experience"]] == [
        (0, "success", ROLLOUTS[0][2], "correct"),
        (0, "failure", ROLLOUTS[1][2], ROLLOUTS[1][3]),
        (1, "success", ROLLOUTS[2][2], "correct"),
        (3, "failure", ROLLOUTS[3][2], ROLLOUTS[3][3]),
    ]  # fmt: skip
    assert [e["slot"] for e in data["experience"]] == [0, 2, 0, 2]
    assert [(i["kind"], i["title"], i["content"], i["step"]) for i in data["insights"]] == [
        ("strategy", *INSIGHTS[0][2:], 4), ("lesson", *INSIGHTS[1][2:], 4),
        ("lesson", *INSIGHTS[2][2:], 4),
    ]  # fmt: skip
    assert [(b["name"], b["instruction"], b["source_cluster"]) for b in data["behaviours"]] == [
        (name, instruction, cluster) for name, instruction, cluster in BEHAVIOURS
    ]
    assert data["problem_texts"] == {"0": PROBLEMS[0], "1": PROBLEMS[1], "3": PROBLEMS[3]}
    assert all("embedding" not in e for e in data["experience"])
    json.dumps(data)  # plain JSON types only


def test_round_trip_with_embeddings_restores_the_state_exactly(
    memory_state, arith_tokenizer, tmp_path
):
    data = memory_to_json(memory_state, CONFIG, arith_tokenizer, include_embeddings=True)
    path = save_memory_json(tmp_path / "memory.json", data)
    assert not list(tmp_path.glob(".*tmp*"))  # the temporary file was renamed away
    restored = memory_from_json(load_memory_json(path), CONFIG, arith_tokenizer)
    _assert_states_equal(restored, memory_state)


def test_round_trip_without_embeddings_calls_embed_fn_on_key_texts(memory_state, arith_tokenizer):
    data = memory_to_json(memory_state, CONFIG, arith_tokenizer)
    with pytest.raises(ValueError, match=r"experience\[0\].*no embed_fn"):
        memory_from_json(data, CONFIG, arith_tokenizer)
    calls = []

    def embed_fn(texts):
        calls.append(texts)
        return np.tile(np.eye(CONFIG.embed_dim, dtype=np.float32)[:1], (len(texts), 1))

    restored = memory_from_json(data, CONFIG, arith_tokenizer, embed_fn)
    assert calls[0] == [r[2] for r in ROLLOUTS]
    assert calls[1][0] == f"{INSIGHTS[0][2]}: {INSIGHTS[0][3]}"
    assert calls[2][1] == f"{BEHAVIOURS[1][0]}: {BEHAVIOURS[1][1]}"
    without_keys = lambda s: s.replace(
        experience=s.experience.replace(embedding=None),
        insight=s.insight.replace(embedding=None),
        behaviours=s.behaviours.replace(embedding=None),
    )
    _assert_states_equal(without_keys(restored), without_keys(memory_state))
    assert np.asarray(restored.experience.embedding)[0, 0, 0] == 1.0


ASCII = st.text(st.characters(min_codepoint=9, max_codepoint=126), max_size=40)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(response=ASCII, feedback=ASCII)
def test_ascii_text_round_trips_to_the_same_token_ids(arith_tokenizer, response, feedback):
    tok = arith_tokenizer
    ids, lengths = _encode(tok, [response], CONFIG.response_len)
    feedback_ids, feedback_lens = _encode(tok, [feedback], CONFIG.feedback_len)
    state, _ = mem.insert_experience_batch(
        mem.init_memory(CONFIG), CONFIG, np.array([2]), ids, lengths, np.array([0.0]),
        feedback_ids, feedback_lens, _unit_vectors(np.random.default_rng(1), 1), 0,
    )  # fmt: skip
    data = memory_to_json(state, CONFIG, tok, include_embeddings=True)
    assert (data["experience"][0]["response"], data["experience"][0]["feedback"]) == (
        response,
        feedback,
    )
    _assert_states_equal(memory_from_json(data, CONFIG, tok), state)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d["experience"][1].update(reward="high"), r"experience\[1\]\.reward"),
        (lambda d: d["insights"][0].pop("title"), r"missing field insights\[0\]\.title"),
        (lambda d: d["insights"][2].update(kind="hint"), r"insights\[2\]\.kind"),
        (lambda d: d["behaviours"][0].update(slot=True), r"behaviours\[0\]\.slot"),
        (lambda d: d.pop("behaviours"), r"missing field behaviours"),
        (lambda d: d.update(format="other"), r"field format"),
    ],
)
def test_malformed_memory_json_error_names_file_and_field(
    memory_state, arith_tokenizer, tmp_path, edit, message
):
    data = memory_to_json(memory_state, CONFIG, arith_tokenizer)
    edit(data)
    path = tmp_path / "memory.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=message) as err:
        load_memory_json(path)
    assert str(path) in str(err.value)


def test_items_that_do_not_fit_the_config_are_refused(memory_state, arith_tokenizer, tmp_path):
    data = memory_to_json(memory_state, CONFIG, arith_tokenizer, include_embeddings=True)
    small = mem.MemoryConfig(**{**data["config"], "num_problems": 2})
    with pytest.raises(ValueError, match=r"experience\[3\]\.problem_id=3"):
        memory_from_json(data, small, arith_tokenizer)
    data["experience"][1]["kind"] = "success"  # slot 2 is a failure slot
    with pytest.raises(ValueError, match=r"experience\[1\]\.slot=2 outside \[0, 2\)"):
        memory_from_json(data, CONFIG, arith_tokenizer)
    (tmp_path / "bad.json").write_text('{"format": ')
    with pytest.raises(ValueError, match=r"bad\.json: not valid JSON"):
        load_memory_json(tmp_path / "bad.json")


def _write_metrics(path, steps=(0, 10, 20, 30)):
    lines = []
    for i, step in enumerate(steps):
        lines.append({
            "step": step, "memory/experience": 8 * i, "memory/insight": 3 * i,
            "memory/behaviour": i, "shortcut/mentions_attempts": i % 2,
            "shortcut/specific_numbers": 2, "reflect/requests": 4, "reflect/parse_failures": i % 3,
        })  # fmt: skip
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")


def _is_png(path) -> bool:
    data = path.read_bytes()
    return data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


def test_report_from_training_workdir_picks_newest_snapshot(
    memory_state, arith_tokenizer, tmp_path
):
    workdir = tmp_path / "run"
    old = memory_to_json(mem.init_memory(CONFIG), CONFIG, arith_tokenizer, step=9)
    save_memory_json(workdir / "memory" / "memory_step_9.json", old)
    data = memory_to_json(memory_state, CONFIG, arith_tokenizer, step=30, problem_texts=PROBLEMS)
    save_memory_json(workdir / "memory" / "memory_step_30.json", data)
    _write_metrics(workdir / "metrics.jsonl")
    out = tmp_path / "out" / "report.html"
    assert report.main([str(workdir), "--out", str(out)]) == 0
    page = out.read_text()
    assert "at step 30" in page and "memory_step_30.json" in page
    for name, instruction, _ in BEHAVIOURS[:1]:
        assert f"<td>{name}</td>" in page and instruction in page
    assert "<td>&lt;script&gt;</td>" in page and "<script>" not in page.split("</head>")[1]
    assert "&lt;b&gt;alert(&#x27;x&#x27;)&lt;/b&gt; &amp; escape me" in page
    assert PROBLEMS[0] in page and PROBLEMS[3] in page and PROBLEMS[2] not in page
    assert html.escape(INSIGHTS[2][3]) in page and html.escape(ROLLOUTS[1][3]) in page
    assert page.count('<details class="searchable">') == 3
    for name in ("growth", "shortcuts", "parse"):
        assert _is_png(out.with_name(f"report_{name}.png"))
    assert page.count('src="data:image/png;base64,') == 3


def test_report_without_metrics_says_so_and_skips_plots(memory_state, arith_tokenizer, tmp_path):
    path = save_memory_json(
        tmp_path / "snap" / "memory.json", memory_to_json(memory_state, CONFIG, arith_tokenizer)
    )
    out = tmp_path / "report.html"
    assert report.main([str(path), "--out", str(out)]) == 0
    page = out.read_text()
    assert "No metrics.jsonl found" in page and "data:image/png" not in page
    assert not list(tmp_path.glob("*.png"))


def test_load_metrics_merges_steps_and_tolerates_a_truncated_last_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 2, "a": 1}\n{"step": 1, "a": 0}\n{"step": 2, "b": 5}\n{"step": 3, ')
    records, note = report.load_metrics(path)
    assert records == [{"step": 1, "a": 0}, {"step": 2, "a": 1, "b": 5}]
    assert "metrics.jsonl:4" in note
    path.write_text('{"step": 1}\nnot json\n{"step": 2}\n')
    with pytest.raises(ValueError, match=r"metrics\.jsonl:2"):
        report.load_metrics(path)


def test_cli_error_names_the_missing_path(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        report.main([str(tmp_path / "nowhere"), "--out", str(tmp_path / "r.html")])
    assert exit_info.value.code == 2
    assert "nowhere: no such memory json file or directory" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit):
        report.main([str(tmp_path / "empty")])
    assert "no memory*.json" in capsys.readouterr().err
