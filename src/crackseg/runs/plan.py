"""What a run over many files will write, decided once before any model loads or input is read.

A `Plan` names every input of this shard and each of its output files; the command line checks it (output folder,
files an earlier run left) and the per-file loop follows it, so names are made in one place and a refused run costs
nothing. Names are made over all the inputs, not just this shard's, so two shards never write the same file.
"""

from __future__ import annotations

import glob
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from crackseg.errors import InputError
from crackseg.io.atomic import check_outputs_free, ensure_output_folder, remove_debris
from crackseg.io.images import IMAGE_EXTENSIONS, is_image_file


@dataclass(frozen=True)
class Item:
    """One input and the files made from it (kind → path)."""

    source: Path
    outputs: dict[str, Path]
    in_blocks: bool = False  # a raster segmented or measured block by block

    def done(self, kind: str) -> bool:
        return self.outputs[kind].exists()


@dataclass(frozen=True)
class Plan:
    out_dir: Path
    items: list[Item]
    run_files: dict[str, Path] = field(default_factory=dict)  # kind → the one file a run writes for all inputs

    def paths(self) -> list[Path]:
        return [q for item in self.items for q in item.outputs.values()] + list(self.run_files.values())


def as_inputs(inputs: str | os.PathLike | list) -> list[str]:
    """A single path or pattern, or a list of them."""
    return [os.fspath(inputs)] if isinstance(inputs, str | os.PathLike) else [os.fspath(i) for i in inputs]


def collect_inputs(inputs: list[str]) -> list[tuple[Path, Path]]:
    """(file, root it was found under) for files, folders (recursive, images only) and glob patterns."""
    found: list[tuple[Path, Path]] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found += [(p, path) for p in sorted(path.rglob("*")) if p.is_file() and is_image_file(p)]
        elif path.is_file():
            found.append((path, path.parent))
        else:
            matches = sorted(Path(m) for m in glob.glob(item, recursive=True))
            if not matches:
                raise InputError(f"{item}: no such file, folder or matching pattern")
            found += [(m, m.parent) for m in matches if m.is_file()]
    unique = {p.resolve(): (p, root) for p, root in found}
    if not unique:
        raise InputError(f"{' '.join(inputs)}: no photos found (looked for {', '.join(sorted(IMAGE_EXTENSIONS))})")
    return list(unique.values())


def shard(items: list, spec: str | None) -> list:
    """The i-th of n deterministic slices ("i/n", 0-based) of a list."""
    if not spec:
        return items
    try:
        index, count = (int(v) for v in spec.split("/"))
        assert 0 <= index < count
    except (ValueError, AssertionError):
        raise InputError(f"--shard {spec!r}: expected i/n with 0 ≤ i < n, e.g. 0/4") from None
    return items[index::count]


def check_output_folder(inputs: list[str], files: list[tuple[Path, Path]], out_dir: Path) -> None:
    """Refuse an output folder that holds input photos or lies inside a searched input folder: outputs there
    could replace photos, and a second run would read the first run's masks as photos."""
    out = out_dir.resolve()
    searched = [Path(item).resolve() for item in inputs if Path(item).is_dir()]
    folders = {path.parent.resolve() for path, _ in files}
    clash = next((f for f in searched if out == f or f in out.parents), None) or (out if out in folders else None)
    if clash is not None:
        raise InputError(
            f"-o {out_dir}: {'is' if clash == out else 'lies inside'} the input folder {clash}; outputs there would "
            f"mix with the photos (and could replace them): choose another folder, e.g. -o {clash}_cracks"
        )


def output_paths(files: list[tuple[Path, Path]], out_dir: Path, suffixes: dict[str, str]) -> dict[Path, dict]:
    """For each input, the path of each output kind (`suffixes`: kind → what follows the name): unique in the run.

    Names follow the input's name (OUT/NAME.png, OUT/NAME_prob.png, ...), with its folder relative to the searched
    root when two inputs share a name, and its extension (OUT/003_jpg.png) when two outputs would still coincide
    (003.jpg and 003.png; site.jpg's probabilities and the mask of an input named site_prob.png).
    """
    names = Counter(p.stem for p, _ in files)
    roots = {r for _, r in files}
    stems = {}
    for path, root in files:
        relative = path.relative_to(root) if names[path.stem] > 1 else Path(path.name)
        if names[path.stem] > 1 and len(roots) > 1:
            relative = Path(root.name) / relative
        stems[path] = out_dir / relative.with_suffix("")

    def outputs(stem: Path) -> dict[str, Path]:
        return {kind: stem.with_name(stem.name + suffix) for kind, suffix in suffixes.items()}

    counts = Counter(q for stem in stems.values() for q in outputs(stem).values())
    for path, stem in stems.items():
        if any(counts[q] > 1 for q in outputs(stem).values()):
            stems[path] = stem.with_name(f"{stem.name}_{path.suffix.lstrip('.').lower()}")
    paths = {path: outputs(stem) for path, stem in stems.items()}
    everything = [q.resolve() for outs in paths.values() for q in outs.values()]
    inputs = {p.resolve() for p, _ in files}
    clash = next((q for q in everything if q in inputs), None)
    if clash is not None or len(set(everything)) < len(everything):
        raise InputError(
            f"{clash or Counter(everything).most_common(1)[0][0]}: two outputs (or an output and an input) would "
            "share this name; rename the inputs or choose another -o"
        )
    return paths


def make_plan(
    inputs,
    out_dir: str | os.PathLike,
    suffixes: dict[str, str],
    *,
    shard_spec: str | None = None,
    run_files: dict[str, str] | None = None,
    in_blocks=None,
) -> Plan:
    """The inputs of this shard and their output paths. `in_blocks(path) -> bool` marks rasters processed block by
    block; `run_files`: kind → file name of the files one run writes for all its inputs."""
    inputs = as_inputs(inputs)
    out_dir = Path(out_dir)
    files = collect_inputs(inputs)
    check_output_folder(inputs, files, out_dir)
    paths = output_paths(files, out_dir, suffixes)
    items = [Item(path, paths[path], bool(in_blocks and in_blocks(path))) for path, _ in shard(files, shard_spec)]
    return Plan(out_dir, items, {kind: out_dir / name for kind, name in (run_files or {}).items()})


def prepare_outputs(plan: Plan, overwrite: bool = False, keep: str = "", skip_existing: bool = False) -> None:
    """Make the output folder, clear what a killed run left of these outputs, and refuse to replace an earlier
    run's files unless `overwrite` (with `skip_existing`, those inputs are skipped instead)."""
    ensure_output_folder(plan.out_dir)
    remove_debris(plan.paths())
    if not skip_existing:
        check_outputs_free(plan.out_dir, plan.paths(), overwrite, keep=keep)
