"""Memory state and ops: parity with a plain-Python reference on random operation sequences,
invariants, and hand-worked examples of the novelty gate and the eviction rule."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pmd_jax import memory as mem

CONFIG = mem.MemoryConfig(
    num_problems=3,
    success_slots=3,
    failure_slots=2,
    insight_slots=4,
    behaviour_slots=5,
    response_len=5,
    feedback_len=3,
    title_len=3,
    content_len=4,
    name_len=3,
    instruction_len=4,
    embed_dim=16,
    # dyadic cosines are k/8: equal to a threshold tests the strict inequality of the gate
    experience_threshold=0.75,
    insight_threshold=0.875,
    behaviour_threshold=0.75,
)
GROUP, INSIGHTS, ACTIONS = 4, 3, 4  # fixed batch sizes: one compile per op
NAMES = [(5,), (5, 6), (5, 6, 7), (6, 5), (7,), (8, 9), (9,), (6,)]
AMBIGUITY = 1e-5  # float32 vs float64 decisions closer than this are not compared


class ReferenceMemory:
    """Plain-Python memory with the rules of pmd_jax/memory/ops.py, float64 cosines."""

    def __init__(self, config: mem.MemoryConfig, exact: bool = False):
        self.config, self.exact = config, exact
        self.experience = [[None] * config.experience_slots for _ in range(config.num_problems)]
        self.insight = [[None] * config.insight_slots for _ in range(config.num_problems)]
        self.bank = [None] * config.behaviour_slots
        self.ambiguous = False

    def _place(self, slots, pool, item, threshold):
        members = [i for i in pool if slots[i] is not None]
        sims = [float(np.dot(slots[i]["embedding"], item["embedding"])) for i in members]
        self.ambiguous |= not self.exact and any(abs(s - threshold) < AMBIGUITY for s in sims)
        if any(s > threshold for s in sims):
            return mem.REJECTED_NOVELTY, -1
        free = [i for i in pool if slots[i] is None]
        if free:
            return mem.INSERTED, free[0]
        candidates = [(i, slots[i]) for i in members] + [(len(slots), item)]

        def redundancy(candidate):
            others = [
                float(np.dot(candidate[1]["embedding"], other[1]["embedding"]))
                for other in candidates
                if other[0] != candidate[0]
            ]
            return max(others, default=-math.inf)

        scores = [redundancy(c) for c in candidates]
        self.ambiguous |= not self.exact and any(0 < max(scores) - s < AMBIGUITY for s in scores)
        victim = min(candidates, key=lambda c: (-redundancy(c), c[1]["step"], c[0]))[0]
        if victim == len(slots):
            return mem.REJECTED_REDUNDANT, -1
        return mem.INSERTED_EVICTING, victim

    def insert(self, level: str, problem_id: int, item: dict):
        if not 0 <= problem_id < self.config.num_problems:
            return mem.SKIPPED, -1
        slots = getattr(self, level)[problem_id]
        if level == "experience":
            success = item["reward"] > self.config.success_reward
            start, stop = (
                (0, self.config.success_slots)
                if success
                else (self.config.success_slots, len(slots))
            )
            pool, threshold = range(start, stop), self.config.experience_threshold
        else:
            pool, threshold = range(len(slots)), self.config.insight_threshold
        status, slot = self._place(slots, pool, item, threshold)
        if slot >= 0:
            slots[slot] = item
        return status, slot

    def act(self, op: int, item: dict):
        if op not in (mem.NEW, mem.UPDATE, mem.REMOVE) or not item["name"]:
            return mem.SKIPPED, -1
        known = [i for i, entry in enumerate(self.bank) if entry and entry["name"] == item["name"]]
        if op == mem.REMOVE:
            if not known:
                return mem.REMOVE_UNKNOWN, -1
            self.bank[known[0]] = None
            return mem.REMOVED, known[0]
        if known:
            self.bank[known[0]] = dict(item, created=self.bank[known[0]]["created"])
            return mem.UPDATED, known[0]
        status, slot = self._place(
            self.bank, range(len(self.bank)), item, self.config.behaviour_threshold
        )
        if slot >= 0:
            self.bank[slot] = item
        return status, slot

    def clear(self, keep_behaviours: bool):
        bank, ambiguous = self.bank, self.ambiguous
        self.__init__(self.config, self.exact)
        self.bank = bank if keep_behaviours else self.bank
        self.ambiguous = ambiguous

    def expected_state(self) -> mem.MemoryState:
        """The arrays a MemoryState holding exactly these items must have."""
        expected = jax.tree.map(np.array, mem.init_memory(self.config))
        experience_texts = {"tokens": "length", "feedback": "feedback_len"}
        insight_texts = {"title": "title_len", "content": "content_len"}
        bank_texts = {"name": "name_len", "instruction": "instruction_len"}
        levels = [
            (expected.experience, self.experience, experience_texts),
            (expected.insight, self.insight, insight_texts),
            (expected.behaviours, [self.bank], bank_texts),
        ]
        for table, rows, texts in levels:
            for p, row in enumerate(rows):
                for k, item in enumerate(row):
                    index = (p, k) if table is not expected.behaviours else (k,)
                    if item is None:
                        continue
                    for text, length in texts.items():
                        getattr(table, text)[(*index, slice(0, len(item[text])))] = item[text]
                        getattr(table, length)[index] = len(item[text])
                    table.embedding[index] = item["embedding"]
                    for field in ("reward", "kind", "source_cluster"):
                        if hasattr(table, field):
                            getattr(table, field)[index] = item[field]
                    if table is expected.behaviours:
                        table.alive[index] = True
                        table.created_step[index] = item["created"]
                        table.updated_step[index] = item["step"]
                    else:
                        table.occupied[index], table.step[index] = True, item["step"]
        return expected


def assert_state_equal(state: mem.MemoryState, expected: mem.MemoryState):
    leaves, _ = jax.tree_util.tree_flatten_with_path(state)
    for (path, got), want in zip(leaves, jax.tree.leaves(expected), strict=True):
        message = jax.tree_util.keystr(path)
        if np.issubdtype(want.dtype, np.floating):
            np.testing.assert_allclose(np.asarray(got), want, atol=1e-6, err_msg=message)
        else:
            np.testing.assert_array_equal(np.asarray(got), want, err_msg=message)


class Generator:
    """Random operations over a few problems, with near-duplicate embeddings.

    "dyadic" embeddings are sign vectors / 4 (unit norm, cosines k/8 exact in float32 and float64,
    so exact ties exercise the tie-breaks); "gaussian" ones are base vectors plus noise."""

    def __init__(self, seed: int, mode: str, config: mem.MemoryConfig = CONFIG):
        self.rng = np.random.default_rng(seed)
        self.mode, self.config, self.bases, self.step = mode, config, [], 0

    def embedding(self) -> np.ndarray:
        dim = self.config.embed_dim
        if self.bases and self.rng.random() < 0.6:
            base = self.bases[self.rng.integers(len(self.bases))]
            if self.mode == "dyadic":
                flips = self.rng.choice(dim, self.rng.integers(0, 3), replace=False)
                vector = base.copy()
                vector[flips] *= -1
                return vector
            return base + self.rng.choice([0.0, 0.2, 0.5, 0.8]) * self.rng.normal(size=dim)
        base = (
            self.rng.choice([-0.25, 0.25], dim)
            if self.mode == "dyadic"
            else self.rng.normal(size=dim)
        )
        self.bases.append(base.astype(np.float32))
        return self.bases[-1]

    def ids(self, width: int, n: int) -> tuple[np.ndarray, np.ndarray]:
        # garbage after each length, and lengths above the width, must be masked/clipped
        return self.rng.integers(1, 50, (n, width)), self.rng.integers(0, width + 2, n)

    def problem_ids(self, n: int) -> np.ndarray:
        ids = np.full(n, self.rng.integers(self.config.num_problems))
        ids[self.rng.random(n) < 0.15] = -1
        ids[self.rng.random(n) < 0.05] = self.config.num_problems  # out of range: skipped
        return ids

    def operation(self) -> dict:
        self.step += int(self.rng.random() < 0.7)
        # an older step now and then: the only way a new item can lose the age tie-break
        step = int(self.rng.integers(self.step + 1)) if self.rng.random() < 0.1 else self.step
        kind = self.rng.choice(
            ["exp1", "expN", "ins1", "insN", "act", "clear"],
            p=[0.25, 0.3, 0.1, 0.15, 0.17, 0.03],
        )
        n = {"exp1": 1, "expN": GROUP, "ins1": 1, "insN": INSIGHTS, "act": ACTIONS}.get(kind, 0)
        op = {
            "kind": kind,
            "step": step,
            "embeddings": np.stack([self.embedding() for _ in range(n)]) if n else None,
        }
        c = self.config
        if kind.startswith("exp"):
            op.update(
                problem_ids=self.problem_ids(n),
                rewards=self.rng.choice([0.0, 0.25, 0.5, 0.75, 1.0], n),
            )
            op["tokens"], op["lengths"] = self.ids(c.response_len, n)
            op["feedback"], op["feedback_lens"] = self.ids(c.feedback_len, n)
        elif kind.startswith("ins"):
            op.update(problem_ids=self.problem_ids(n), kinds=self.rng.integers(0, 2, n))
            op["titles"], op["title_lens"] = self.ids(c.title_len, n)
            op["contents"], op["content_lens"] = self.ids(c.content_len, n)
        elif kind == "act":
            names = [NAMES[i] for i in self.rng.integers(len(NAMES), size=n)]
            names[0] = names[0] if self.rng.random() < 0.9 else ()
            name, name_len = mem.pad_ids(names, c.name_len)
            name[name == 0] = self.rng.integers(1, 50)  # garbage after the name
            op.update(
                ops=self.rng.choice(4, n, p=[0.1, 0.45, 0.25, 0.2]), name=name, name_len=name_len
            )
            op["instruction"], op["instruction_len"] = self.ids(c.instruction_len, n)
            op["source_cluster"] = self.rng.integers(0, 9, n)
        op["flag"] = bool(self.rng.random() < 0.5)
        return op


def _texts(op, i, fields) -> dict:
    return {
        text: tuple(int(t) for t in op[ids][i][: min(op[length][i], op[ids].shape[1])])
        for text, (ids, length) in fields.items()
    }


def _unit64(vector) -> np.ndarray:
    vector = np.asarray(vector, np.float32).astype(np.float64)
    return vector / max(np.linalg.norm(vector), 1e-12)


def apply_both(state, ref: ReferenceMemory, op: dict, config=CONFIG):
    """Apply one random operation to the jit'd state and the reference -> (state, got, want)."""
    kind, step = op["kind"], op["step"]
    if kind == "clear":
        ref.clear(op["flag"])
        return mem.clear(state, config, keep_behaviours=op["flag"]), None, None
    single = kind in ("exp1", "ins1")
    pick = (lambda x: x[0]) if single else (lambda x: x)
    if kind.startswith("exp"):
        insert = mem.insert_experience if single else mem.insert_experience_batch
        names = "problem_ids tokens lengths rewards feedback feedback_lens embeddings".split()
        state, got = insert(state, config, *(pick(op[n]) for n in names), step)
        fields = {"tokens": ("tokens", "lengths"), "feedback": ("feedback", "feedback_lens")}
        items = [
            dict(_texts(op, i, fields), reward=np.float32(op["rewards"][i]))
            for i in range(len(op["problem_ids"]))
        ]
        level = "experience"
    elif kind.startswith("ins"):
        insert = mem.insert_insight if single else mem.insert_insights
        names = "problem_ids kinds titles title_lens contents content_lens embeddings".split()
        state, got = insert(state, config, *(pick(op[n]) for n in names), step)
        fields = {"title": ("titles", "title_lens"), "content": ("contents", "content_lens")}
        items = [
            dict(_texts(op, i, fields), kind=op["kinds"][i]) for i in range(len(op["problem_ids"]))
        ]
        level = "insight"
    else:
        actions = mem.BehaviourActions(
            **{
                f: op[f]
                for f in ("name", "name_len", "instruction", "instruction_len", "source_cluster")
            },
            op=op["ops"],
            embedding=op["embeddings"],
        )
        state, got = mem.apply_behaviour_actions(state, config, actions, step)
        fields = {"name": ("name", "name_len"), "instruction": ("instruction", "instruction_len")}
        want = []
        for i in range(ACTIONS):
            item = dict(
                _texts(op, i, fields),
                source_cluster=op["source_cluster"][i],
                created=step,
                step=step,
                embedding=_unit64(op["embeddings"][i]),
            )
            want.append(ref.act(int(op["ops"][i]), item))
        return state, got, want
    want = []
    for i, item in enumerate(items):
        item.update(step=step, embedding=_unit64(op["embeddings"][i]))
        want.append(ref.insert(level, int(op["problem_ids"][i]), item))
    return state, got, want


def run_sequence(seed: int, mode: str, length: int = 14):
    """Random sequence on both implementations; None when a float decision was too close."""
    generator, ref, state = (
        Generator(seed, mode),
        ReferenceMemory(CONFIG, exact=mode == "dyadic"),
        mem.init_memory(CONFIG),
    )
    for _ in range(length):
        state, got, want = apply_both(state, ref, generator.operation())
        if ref.ambiguous:
            return None
        if want is not None:
            assert np.atleast_1d(got.status).tolist() == [w[0] for w in want], (seed, mode)
            assert np.atleast_1d(got.slot).tolist() == [w[1] for w in want], (seed, mode)
    assert_state_equal(state, ref.expected_state())
    return state, ref


JITTED_OPS = (
    mem.insert_experience,
    mem.insert_experience_batch,
    mem.insert_insight,
    mem.insert_insights,
    mem.apply_behaviour_actions,
)


def test_random_sequences_match_python_reference():
    compiles_before = [op._cache_size() for op in JITTED_OPS]
    compared, skipped = 0, 0
    for seed in range(220):
        result = run_sequence(seed, "dyadic" if seed % 2 else "gaussian")
        if result is None:
            skipped += 1
            continue
        state, ref = result
        compared += 1
        sizes = {k: int(v) for k, v in mem.memory_sizes(state, CONFIG).items()}
        success = [
            sum(x is not None for x in row[: CONFIG.success_slots]) for row in ref.experience
        ]
        assert sizes["experience_successes"] == sum(success)
        assert sizes["behaviours"] == sum(x is not None for x in ref.bank)
    print(f"compared {compared}, skipped {skipped}")
    assert compared >= 200 and skipped <= 10, (compared, skipped)
    # the shapes never changed, so each op compiled at most once in this test
    for op, before in zip(JITTED_OPS, compiles_before, strict=True):
        assert op._cache_size() - before <= 1, op


def test_random_sequences_exercise_every_outcome():
    generator, ref, state = Generator(1, "dyadic"), ReferenceMemory(CONFIG), mem.init_memory(CONFIG)
    seen = set()
    for _ in range(300):
        state, got, want = apply_both(state, ref, generator.operation())
        seen |= set(np.atleast_1d(got.status).tolist()) if got is not None else set()
    assert seen == set(range(len(mem.STATUS_NAMES)))


def check_invariants(state: mem.MemoryState, config: mem.MemoryConfig = CONFIG):
    """Kinds in their slots, no two stored items of one pool above the threshold, names unique,
    empty slots canonical."""
    exp, ins, bank = (
        jax.tree.map(np.asarray, x) for x in (state.experience, state.insight, state.behaviours)
    )
    success_slot = np.arange(config.experience_slots) < config.success_slots
    assert np.all(((exp.reward > config.success_reward) == success_slot)[exp.occupied])
    pools = [
        (exp, success_slot, config.experience_threshold),
        (exp, ~success_slot, config.experience_threshold),
    ]
    pools.append((ins, np.ones(config.insight_slots, bool), config.insight_threshold))
    for table, pool, threshold in pools:
        for p in range(config.num_problems):
            stored = table.embedding[p][pool & table.occupied[p]]
            sims = stored @ stored.T - 3 * np.eye(len(stored))
            assert np.all(sims <= threshold + 1e-6)
    names = [tuple(bank.name[i, : bank.name_len[i]]) for i in np.flatnonzero(bank.alive)]
    assert len(names) == len(set(names))
    empty = jax.tree.map(np.asarray, mem.init_memory(config))
    for table, want, used in (
        (exp, empty.experience, exp.occupied),
        (ins, empty.insight, ins.occupied),
        (bank, empty.behaviours, bank.alive),
    ):
        for got_column, want_column in zip(
            jax.tree.leaves(table), jax.tree.leaves(want), strict=True
        ):
            np.testing.assert_array_equal(got_column[~used], want_column[~used])


def random_state(seed: int, mode: str = "gaussian", length: int = 30):
    generator, ref, state = Generator(seed, mode), ReferenceMemory(CONFIG), mem.init_memory(CONFIG)
    for _ in range(length):
        op = generator.operation()
        if op["kind"] != "clear":
            state, _, _ = apply_both(state, ref, op)
    return state, generator


def test_random_operations_keep_invariants():
    for seed in range(16):
        generator = Generator(1000 + seed, ["gaussian", "dyadic"][seed % 2])
        state, ref = mem.init_memory(CONFIG), ReferenceMemory(CONFIG)
        for _ in range(25):
            state, _, _ = apply_both(state, ref, generator.operation())
            check_invariants(state)


def test_retrieval_returns_true_top_k_over_alive_entries():
    for seed in range(12):
        state, generator = random_state(2000 + seed, ["gaussian", "dyadic"][seed % 2])
        bank = jax.tree.map(np.asarray, state.behaviours)
        alive = np.flatnonzero(bank.alive)
        queries = np.stack([generator.embedding() for _ in range(6)])
        for k in (3, CONFIG.behaviour_slots):
            indices, scores, valid = map(np.asarray, mem.retrieve_behaviours(state, queries, k=k))
            for b, query in enumerate(queries):
                sims = {
                    int(i): float(np.dot(_unit64(query), bank.embedding[i].astype(np.float64)))
                    for i in alive
                }
                order = sorted(sims, key=lambda i: (-sims[i], i))[:k]
                assert valid[b].tolist() == [j < len(order) for j in range(k)]
                np.testing.assert_allclose(
                    scores[b, : len(order)], [sims[i] for i in order], atol=1e-6
                )
                assert np.all(indices[b, len(order) :] == -1)
                gaps = np.diff([sims[i] for i in order])
                if not np.any((gaps < 0) & (gaps > -AMBIGUITY)):  # no float near-tie
                    assert indices[b, : len(order)].tolist() == order


def test_clear_empties_experience_and_insight():
    state, _ = random_state(4000)
    assert int(mem.memory_sizes(state, CONFIG)["experience_successes"]) > 0
    empty = jax.tree.map(np.asarray, mem.init_memory(CONFIG))
    behaviours = jax.tree.map(np.asarray, state.behaviours)
    copy = jax.tree.map(jnp.copy, state)  # clear donates its input
    assert_state_equal(
        mem.clear(state, CONFIG, keep_behaviours=True), empty.replace(behaviours=behaviours)
    )
    cleared = mem.clear(copy, CONFIG, keep_behaviours=False)
    assert_state_equal(cleared, empty)
    assert all(int(v) == 0 for v in mem.memory_sizes(cleared, CONFIG).values())


def _unit_vector(*pairs) -> np.ndarray:
    vector = np.zeros(CONFIG.embed_dim, np.float32)
    for axis, value in pairs:
        vector[axis] = value
    return vector


def _insert_success(state, problem_id, embedding, step):
    return mem.insert_experience(
        state, CONFIG, problem_id, np.arange(1, 6), 3, 1.0, np.zeros(3), 0, embedding, step
    )


def test_novelty_gate_compares_within_one_kind():
    state = mem.init_memory(CONFIG)
    state, first = _insert_success(state, 0, _unit_vector((0, 1.0)), 0)
    state, near = _insert_success(state, 0, _unit_vector((0, 0.9), (1, 0.3)), 1)  # cosine 0.95
    state, other_problem = _insert_success(state, 1, _unit_vector((0, 1.0)), 1)
    state, failure = mem.insert_experience(
        state, CONFIG, 0, np.ones(5), 5, 0.0, np.ones(3), 2, _unit_vector((0, 1.0)), 2
    )
    assert (int(first.status), int(first.slot)) == (mem.INSERTED, 0)
    assert (int(near.status), int(near.slot)) == (mem.REJECTED_NOVELTY, -1)
    assert (int(other_problem.status), int(other_problem.slot)) == (mem.INSERTED, 0)
    assert (int(failure.status), int(failure.slot)) == (mem.INSERTED, CONFIG.success_slots)
    np.testing.assert_array_equal(np.asarray(state.experience.tokens[0, 0]), [1, 2, 3, 0, 0])


def test_full_kind_evicts_older_member_of_closest_pair():
    state = mem.init_memory(CONFIG)
    stored = [_unit_vector((0, 1.0)), _unit_vector((1, 1.0)), _unit_vector((0, 0.6), (2, 0.8))]
    for step, embedding in enumerate(stored):  # closest pair so far: slots 0 and 2 (cosine 0.6)
        state, _ = _insert_success(state, 0, embedding, 10 + step)
    closer = _unit_vector((1, 0.7), (3, 0.714))  # cosine 0.7 to slot 1: the new closest pair
    before = jax.tree.map(np.asarray, state)
    evicted_state, outcome = _insert_success(jax.tree.map(jnp.copy, state), 0, closer, 20)
    assert (int(outcome.status), int(outcome.slot)) == (mem.INSERTED_EVICTING, 1)
    assert np.asarray(evicted_state.experience.step[0, :3]).tolist() == [10, 20, 12]
    # an item older than its partner loses the age tie-break: the memory is unchanged
    rejected_state, outcome = _insert_success(state, 0, closer, 5)
    assert (int(outcome.status), int(outcome.slot)) == (mem.REJECTED_REDUNDANT, -1)
    assert_state_equal(rejected_state, before)


def test_behaviour_actions_address_entries_by_name():
    names = [(5, 6), (7,), (5, 6), (8,), (9,), (7,), (6,), ()]
    ops = [mem.NEW, mem.NEW, mem.NEW, mem.UPDATE, mem.REMOVE, mem.REMOVE, mem.NEW, mem.NEW]
    embeddings = [_unit_vector((i, 1.0)) for i in (0, 1, 2, 3, 4, 5)] + [
        _unit_vector((2, 0.95), (6, 0.31)),
        _unit_vector((7, 1.0)),
    ]
    name, name_len = mem.pad_ids(names, CONFIG.name_len)
    instruction, instruction_len = mem.pad_ids(
        [(i + 1,) * (i % 4 + 1) for i in range(8)], CONFIG.instruction_len
    )
    actions = mem.BehaviourActions(
        op=np.array(ops),
        name=name,
        name_len=name_len,
        instruction=instruction,
        instruction_len=instruction_len,
        embedding=np.stack(embeddings),
        source_cluster=np.arange(8),
    )
    state, outcome = mem.apply_behaviour_actions(mem.init_memory(CONFIG), CONFIG, actions, 4)
    assert np.asarray(outcome.status).tolist() == [
        mem.INSERTED,
        mem.INSERTED,
        mem.UPDATED,  # NEW of a known name rewrites it: names stay unique
        mem.INSERTED,  # UPDATE of an unknown name acts as NEW
        mem.REMOVE_UNKNOWN,
        mem.REMOVED,
        mem.REJECTED_NOVELTY,  # cosine 0.95 to the rewritten (5, 6)
        mem.SKIPPED,  # empty name
    ]
    assert np.asarray(outcome.slot).tolist() == [0, 1, 0, 2, -1, 1, -1, -1]
    bank = jax.tree.map(np.asarray, state.behaviours)
    assert bank.alive.tolist() == [True, False, True, False, False]
    assert bank.instruction[0].tolist() == [3, 3, 3, 0] and bank.source_cluster[0] == 2
    np.testing.assert_array_equal(bank.embedding[0], embeddings[2])


def test_batch_of_groups_equals_one_by_one_insertion():
    generator = Generator(5000, "dyadic")
    rewards = np.array([[1.0, 1.0, 0.0, 1.0], [0.0, 0.0, 1.0, 0.0]])
    embeddings = np.stack([[generator.embedding() for _ in range(4)] for _ in range(2)])
    tokens, lengths = generator.ids(CONFIG.response_len, 8)
    feedback, feedback_lens = generator.ids(CONFIG.feedback_len, 8)
    args = (
        np.array([[0] * 4, [2] * 4]),
        tokens.reshape(2, 4, -1),
        lengths.reshape(2, 4),
        rewards,
        feedback.reshape(2, 4, -1),
        feedback_lens.reshape(2, 4),
        embeddings,
    )
    batched, outcome = mem.insert_experience_batch(mem.init_memory(CONFIG), CONFIG, *args, 3)
    state, statuses = mem.init_memory(CONFIG), []
    for b, j in np.ndindex(2, 4):
        state, single = mem.insert_experience(state, CONFIG, *(a[b, j] for a in args), 3)
        statuses.append(int(single.status))
    assert np.asarray(outcome.status).reshape(-1).tolist() == statuses
    assert_state_equal(batched, jax.tree.map(np.asarray, state))


def test_read_problem_gathers_rows_and_masks_out_of_range_ids():
    state, _ = random_state(6000)
    experience, insight = mem.read_problem(state, np.array([2, 0, -1, CONFIG.num_problems]))
    for view, table in ((experience, state.experience), (insight, state.insight)):
        np.testing.assert_array_equal(
            np.asarray(view.embedding[:2]), np.asarray(table.embedding)[[2, 0]]
        )
        np.testing.assert_array_equal(
            np.asarray(view.occupied[:2]), np.asarray(table.occupied)[[2, 0]]
        )
        assert not np.asarray(view.occupied[2:]).any()


def test_grow_keeps_items_and_adds_empty_problems():
    state, _ = random_state(7000)
    grown, config = mem.grow(state, CONFIG, 5)
    assert config.num_problems == 5
    assert grown.experience.occupied.shape == (5, CONFIG.experience_slots)
    np.testing.assert_array_equal(
        np.asarray(grown.experience.tokens[:3]), np.asarray(state.experience.tokens)
    )
    assert not np.asarray(grown.insight.occupied[3:]).any()
    assert np.all(np.asarray(grown.experience.step[3:]) == -1)
    grown, outcome = mem.insert_experience(
        grown, config, 4, np.ones(5), 5, 1.0, np.ones(3), 3, _unit_vector((0, 1.0)), 1
    )
    assert (int(outcome.status), int(outcome.slot)) == (mem.INSERTED, 0)
    with pytest.raises(ValueError, match="only grows"):
        mem.grow(state, CONFIG, 2)


def test_inputs_are_fitted_and_bad_shapes_named():
    long_tokens = np.arange(1, 9)  # wider than response_len: truncated, length clipped
    item = (0, long_tokens, 8, 1.0, np.ones(1), 1, _unit_vector((0, 2.0)), 0)
    state, _ = mem.insert_experience(mem.init_memory(CONFIG), CONFIG, *item)
    assert np.asarray(state.experience.tokens[0, 0]).tolist() == [1, 2, 3, 4, 5]
    assert int(state.experience.length[0, 0]) == 5 and int(state.experience.feedback_len[0, 0]) == 1
    np.testing.assert_allclose(np.linalg.norm(np.asarray(state.experience.embedding[0, 0])), 1.0)
    with pytest.raises(ValueError, match="embed_dim=16"):
        mem.insert_experience(state, CONFIG, 0, long_tokens, 8, 1.0, np.ones(1), 1, np.ones(8), 0)
    with pytest.raises(ValueError, match="k=6"):
        mem.retrieve_behaviours(state, np.ones((1, 16)), k=6)
    with pytest.raises(ValueError, match="insight_threshold"):
        mem.MemoryConfig(insight_threshold=1.5)


def test_outcome_counts_and_pad_ids():
    counts = mem.outcome_counts(mem.Outcome(np.array([0, 2, 2, 7]), np.array([0, -1, -1, -1])))
    nonzero = {name: int(count) for name, count in counts.items() if int(count)}
    assert nonzero == {"inserted": 1, "rejected_novelty": 2, "remove_unknown": 1}
    ids, lengths = mem.pad_ids([[4, 5, 6], [], [1, 2, 3, 4, 5]], 4, pad_id=9)
    assert ids.tolist() == [[4, 5, 6, 9], [9, 9, 9, 9], [1, 2, 3, 4]]
    assert lengths.tolist() == [3, 0, 4]
