"""Latency of the behaviour bank's jit'd ops vs bank size Nb (CPU, embed dim 576, float32).

- insert: `ops.apply_behaviour_actions` with one NEW action (novelty gate over all Nb entries +
  write) into a half-full bank, so a free slot exists: the path taken until the bank fills.
  Only up to `--op-max` (1e4): the op also compiles its eviction branch, whose [Nb+1, Nb+1]
  similarity matrix XLA allocates even when the branch is not taken (80 GB at Nb = 1e5).
- insert_evicting: the same into a full bank (eviction, O(Nb^2 D)), up to `--evict-max`.
- table_insert: the O(Nb D) part of an insert on the embedding table alone (gate + row write),
  at every size: what an insert would cost without the eviction matrix.
- retrieve: `ops.retrieve_behaviours` top-3 cosine for 1 query and for 16 queries.

Each op is compiled once per size, then timed as the best of `--repeats` calls. The bank keeps
the default token widths (name 8, instruction 64 ids): at Nb = 1e6 its state is about 2.6 GB
(2.3 GB of it the embedding table); a size that runs out of memory is recorded as such.
Writes benchmarks/results/memory_ops.json and memory_ops.png (log-log).
Run: `python -m benchmarks.memory_ops [--quick]`.
"""

from __future__ import annotations

import argparse
import functools

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.common import RESULTS_DIR, best_time, machine_description, write_result
from pmd_jax.memory import ops
from pmd_jax.memory.state import NEW, BehaviourActions, MemoryConfig, init_memory, unit

EMBED_DIM = 576


@functools.partial(jax.jit, static_argnames=("config", "alive"))
def filled_state(config: MemoryConfig, alive: int, seed: int = 0):
    """A memory whose behaviour bank has `alive` entries with random unit embeddings [Nb, D]."""
    state = init_memory(config)
    slots = config.behaviour_slots
    key = jax.random.PRNGKey(seed)
    embedding = unit(jax.random.normal(key, (slots, config.embed_dim), jnp.float32))
    is_alive = jnp.arange(slots) < alive
    index = jnp.arange(slots)
    names = jnp.stack([index % 1000 + 3, index // 1000 + 3], axis=1).astype(jnp.int32)
    bank = state.behaviours.replace(
        embedding=jnp.where(is_alive[:, None], embedding, 0.0),
        alive=is_alive,
        name=state.behaviours.name.at[:, :2].set(jnp.where(is_alive[:, None], names, 0)),
        name_len=jnp.where(is_alive, 2, 0),
        updated_step=jnp.where(is_alive, 0, -1),
        created_step=jnp.where(is_alive, 0, -1),
    )
    return state.replace(behaviours=bank)


def new_action(config: MemoryConfig, index: int) -> BehaviourActions:
    """One NEW action [A = 1] with a fresh name (3 ids, never stored) and a random embedding."""
    rng = np.random.default_rng(index)
    return BehaviourActions(
        op=np.array([NEW], np.int32),
        name=np.array([[7, 7, index % 1000 + 3]], np.int32),
        name_len=np.array([3], np.int32),
        instruction=np.full((1, 4), 5, np.int32),
        instruction_len=np.array([4], np.int32),
        embedding=rng.normal(size=(1, config.embed_dim)).astype(np.float32),
        source_cluster=np.array([0], np.int32),
    )


def time_insert(config: MemoryConfig, alive: int, repeats: int) -> tuple[float, list[float]]:
    """Best seconds of one NEW action into a bank with `alive` of Nb entries filled."""
    holder = [filled_state(config, alive)]
    actions = [new_action(config, i) for i in range(repeats + 1)]
    calls = iter(range(repeats + 1))

    def insert():
        index = next(calls)
        holder[0], outcome = ops.apply_behaviour_actions(holder[0], config, actions[index], 1)
        jax.block_until_ready(outcome)

    insert()  # compile + warm-up
    return best_time(insert, repeats)


@functools.partial(jax.jit, donate_argnames=("table",))
def table_insert(table, alive, embedding, threshold: float = 0.95):
    """The insert's O(Nb D) part on the embedding table alone: novelty gate + write of one row.

    table [Nb, D] unit rows, alive [Nb] bool, embedding [D] -> (table, alive, written slot or -1).
    """
    embedding = unit(embedding)
    duplicate = jnp.any(alive & (ops._dot(table, embedding) > threshold))
    slot = jnp.argmax(~alive)
    write = ~duplicate & ~alive[slot]
    table = table.at[slot].set(jnp.where(write, embedding, table[slot]))
    return table, alive.at[slot].set(alive[slot] | write), jnp.where(write, slot, -1)


def time_table_insert(state, repeats: int) -> tuple[float, list[float]]:
    """Best seconds of `table_insert` into the (half-full) behaviour embedding table."""
    bank = state.behaviours
    holder = [jnp.copy(bank.embedding), jnp.copy(bank.alive)]
    rng = np.random.default_rng(0)
    embeddings = rng.normal(size=(repeats + 1, EMBED_DIM)).astype(np.float32)
    calls = iter(range(repeats + 1))

    def insert():
        holder[0], holder[1], slot = table_insert(holder[0], holder[1], embeddings[next(calls)])
        jax.block_until_ready(slot)

    insert()
    seconds = best_time(insert, repeats)
    del holder[:]
    return seconds


def time_retrieve(state, queries: int, repeats: int) -> tuple[float, list[float]]:
    """Best seconds of top-3 retrieval for `queries` random queries [B, D]."""
    query = jax.random.normal(jax.random.PRNGKey(1), (queries, EMBED_DIM), jnp.float32)
    run = lambda: jax.block_until_ready(ops.retrieve_behaviours(state, query, k=3))
    run()
    return best_time(run, repeats)


def available_bytes() -> int:
    """MemAvailable from /proc/meminfo (a large number where it cannot be read)."""
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 2**62


def bank_bytes(config: MemoryConfig) -> int:
    """Bytes of the behaviour bank: embedding [Nb, D] f32 + ids [Nb, Ln + Li] int32 + 6 scalars."""
    per_entry = 4 * (config.embed_dim + config.name_len + config.instruction_len + 6)
    return config.behaviour_slots * per_entry


def plot(cases: list[dict], path) -> None:
    """Log-log latency (ms) vs bank size, one line per op."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for key, label in (
        ("insert_ms", "insert (free slot)"),
        ("insert_evicting_ms", "insert (full bank, eviction)"),
        ("table_insert_ms", "gate + write on the embedding table"),
        ("retrieve_1_ms", "top-3 retrieve, 1 query"),
        ("retrieve_16_ms", "top-3 retrieve, 16 queries"),
    ):
        points = [(c["bank_size"], c[key]) for c in cases if c.get(key)]
        if points:
            ax.plot(*zip(*points, strict=True), marker="o", label=label)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("behaviour bank size Nb")
    ax.set_ylabel("latency (ms, best of repeats)")
    ax.set_title(f"memory ops, D={EMBED_DIM}, {jax.default_backend()}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10**e for e in range(2, 7)])
    parser.add_argument("--op-max", type=int, default=10**4, help="largest Nb for the real op")
    parser.add_argument("--evict-max", type=int, default=10**4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--memory-fraction", type=float, default=0.5, help="of MemAvailable a size may use"
    )
    parser.add_argument("--quick", action="store_true", help="eviction only up to 1e3")
    args = parser.parse_args(argv)
    if args.quick:
        args.evict_max = min(args.evict_max, 10**3)
    cases = []
    for size in args.sizes:
        config = MemoryConfig(behaviour_slots=size, embed_dim=EMBED_DIM)
        case = {"bank_size": size, "insert_ms": None, "insert_evicting_ms": None}
        # The fill and the table copy hold about 3 banks at once; on a shared machine an
        # allocation that does not fit gets another process OOM-killed, so skip instead.
        needed, free = 3 * bank_bytes(config), available_bytes()
        if needed > free * args.memory_fraction:
            case["error"] = (
                f"skipped: needs ~{needed / 2**30:.1f} GiB, {free / 2**30:.1f} available"
            )
            print(f"[memory_ops] Nb={size}: {case['error']}")
            cases.append(case)
            continue
        try:
            if size <= args.op_max:
                case["insert_ms"] = time_insert(config, size // 2, args.repeats)[0] * 1e3
            if size <= args.evict_max:
                case["insert_evicting_ms"] = time_insert(config, size, args.repeats)[0] * 1e3
            state = filled_state(config, size // 2)
            case["table_insert_ms"] = time_table_insert(state, args.repeats)[0] * 1e3
            for queries in (1, 16):
                seconds = time_retrieve(state, queries, args.repeats)[0]
                case[f"retrieve_{queries}_ms"] = seconds * 1e3
            del state
        except jax.errors.JaxRuntimeError as err:  # RESOURCE_EXHAUSTED on a small machine
            case["error"] = str(err).splitlines()[0][:200]
            print(f"[memory_ops] Nb={size}: {case['error']}")
            cases.append(case)
            continue
        fmt = lambda ms: "-" if ms is None else f"{ms:.3f} ms"
        print(
            f"[memory_ops] Nb={size:>8}: insert {fmt(case['insert_ms'])}, evicting "
            f"{fmt(case['insert_evicting_ms'])}, table insert {fmt(case['table_insert_ms'])}, "
            f"retrieve x1 {fmt(case['retrieve_1_ms'])}, x16 {fmt(case['retrieve_16_ms'])}"
        )
        cases.append(case)
    png = RESULTS_DIR / "memory_ops.png"
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    plot(cases, png)
    result = {
        "benchmark": "memory_ops",
        "what": "behaviour bank: insert = apply_behaviour_actions (1 NEW, up to op_max), "
        "table_insert = novelty gate + row write on the embedding table, retrieve = "
        "retrieve_behaviours (top-3 cosine); best of repeats, after a compile call",
        "op_max": args.op_max,
        "evict_max": args.evict_max,
        "embed_dim": EMBED_DIM,
        "repeats": args.repeats,
        "machine": machine_description(),
        "plot": png.name,
        "cases": cases,
    }
    print(f"[memory_ops] wrote {write_result('memory_ops', result)} and {png}")
    return result


if __name__ == "__main__":
    main()
