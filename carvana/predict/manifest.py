"""A prediction folder knows what made it. predict.json holds one entry per set of settings that wrote into the folder
(the checkpoints with the SHA-256 of their files, TTA, threshold, outputs, geometry, data root) with the photos it
covers: the seed's stacked recipe writes the out-of-fold masks of five checkpoints and the test photos of their
ensemble into one folder. A rerun over photos written with the same settings resumes; over photos written with other
settings it stops with what differs (a checkpoint whose SHA-256 changed since is named), unless overwrite=true starts
those photos afresh; files there that predict.py did not record are never removed: the run stops before any work.
submit.py reads the threshold and the data root from it."""

import hashlib
import json
from pathlib import Path
from typing import NamedTuple

from carvana import CarvanaError
from carvana.data.io import image_size
from carvana.files import atomic_path, is_temporary, remove_dead_temporaries
from carvana.predict.shards import SHARD_PATTERN, scan_shard

MANIFEST = "predict.json"
COMPARED = ("checkpoints", "tta", "threshold", "write", "geometry", "cutout_alpha", "cutout_colour")
CUTOUTS = "cutouts"  # write=cutout: <output_dir>/cutouts/<photo>.png


def sha256(path: Path) -> str:
    """The SHA-256 of a file's bytes (a checkpoint: its weights), read in 16 MB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            digest.update(chunk)
    return digest.hexdigest()


def settings(cfg: dict, ckpts: list[Path], geometry: list[str], provenance: dict) -> dict:
    """The settings a predict.py run's outputs depend on (COMPARED: the checkpoints, cfg's tta, threshold, write (a
    list) and cut-out keys, `geometry` naming the network inputs and the tiling), and where its photos come from, which
    the report reads: `provenance` holds data_root, group (the regex of the photos' groups), images_dir and masks_dir
    (null: photos without masks)."""
    cutouts = "cutout" in cfg["write"]
    return {"checkpoints": [{"path": str(p), "sha256": sha256(p)} for p in ckpts], "tta": cfg["tta"],
            "threshold": cfg["threshold"], "write": sorted(cfg["write"]), "geometry": geometry,
            "cutout_alpha": cfg["cutout_alpha"] if cutouts else None,
            "cutout_colour": cfg["cutout_colour"] if cutouts else None, **provenance}


def read_manifest(directory: str | Path) -> list[dict]:
    """The entries recorded in a prediction folder (settings and their photos), [] when it has none."""
    path = Path(directory) / MANIFEST
    if not path.is_file():
        return []
    try:
        return json.loads(path.read_text())["entries"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise CarvanaError(f"{path} is not predict.py's record ({err}): remove it, or choose another folder") from None


def prepare(output_dir: Path, wanted: dict, images: list[Path], overwrite: bool, rank_zero: bool) -> None:
    """Make output_dir ready for a run of the `wanted` settings over `images`; see the module's docstring. Only rank 0
    removes and records; temporaries that killed processes of this host left are removed by every rank."""
    remove_dead_temporaries(output_dir)
    remove_dead_temporaries(output_dir / CUTOUTS)
    entries = read_manifest(output_dir)
    names = {p.name for p in images}
    mine = {key: wanted[key] for key in COMPARED}
    others = [e for e in entries if {key: e["settings"].get(key) for key in COMPARED} != mine]
    clash = {name for e in others for name in e["photos"]} & names
    recorded = {name for e in entries for name in e["photos"]}
    check_unrecorded_files(output_dir, images, recorded)
    unrecorded = existing_outputs(output_dir, images) - recorded  # rows of predict.py's own RLE shards
    if (clash or unrecorded) and not overwrite:
        what = ("predictions of other settings (" + _difference(others, wanted) + ")") if clash else \
            "RLE rows that predict.py did not record"
        raise CarvanaError(f"output_dir={output_dir} holds {what} for {len(clash or unrecorded)} of these photos: "
                           "start them afresh with overwrite=true, or choose another output_dir")
    if not rank_zero:
        return
    remove_outputs(output_dir, [p for p in images if p.name in clash | unrecorded])
    kept = [{**e, "photos": sorted(set(e["photos"]) - names)} for e in others]
    same = [e for e in entries if e not in others]
    photos = sorted(names.union(*(e["photos"] for e in same)))
    record = [e for e in kept if e["photos"]] + [{"settings": wanted, "photos": photos}]
    with atomic_path(output_dir / MANIFEST) as tmp:
        tmp.write_text(json.dumps({"entries": record}) + "\n")


def check_unrecorded_files(output_dir: Path, images: list[Path], recorded: set[str]) -> None:
    """Refuse files where the predictions of `images` go that predict.py did not record (photos, anyone's PNGs):
    overwrite=true removes only predictions this tool wrote, and a run would write over them."""
    found = [path for p in images if p.name not in recorded
             for path in (output_dir / f"{p.stem}.png", output_dir / CUTOUTS / f"{p.stem}.png") if path.exists()]
    if found:
        raise CarvanaError(f"output_dir={output_dir} holds {len(found)} files that predict.py did not record where "
                           f"these photos' predictions go (e.g. {found[0]}): move them away (if they are predictions "
                           "whose predict.json was lost, remove them), or choose another output_dir")


def existing_outputs(output_dir: Path, images: list[Path]) -> set[str]:
    """The names of `images` that already have a PNG in output_dir or a row in its RLE shards."""
    in_shards = {row.name for shard in output_dir.glob(SHARD_PATTERN) for row in scan_shard(shard)[0]}
    return {p.name for p in images if (output_dir / f"{p.stem}.png").exists() or p.name in in_shards
            or (output_dir / CUTOUTS / f"{p.stem}.png").exists()}


def remove_outputs(output_dir: Path, images: list[Path]) -> None:
    """Remove the PNGs of `images` and their rows from the RLE shards (each shard rewritten atomically)."""
    names = {p.name for p in images}
    for photo in images:
        (output_dir / f"{photo.stem}.png").unlink(missing_ok=True)
        (output_dir / CUTOUTS / f"{photo.stem}.png").unlink(missing_ok=True)
    for shard in sorted(output_dir.glob(SHARD_PATTERN)) if names else []:
        rows, _ = scan_shard(shard)
        if any(row.name in names for row in rows):
            with open(shard, "rb") as f, atomic_path(shard) as tmp, open(tmp, "wb") as out:
                out.write(f.readline())  # the header
                for row in rows:
                    f.seek(row.start)
                    line = f.read(row.length)
                    if row.name not in names:
                        out.write(line)


def written_names(output_dir: Path, write: list[str], images: list[Path]) -> set[str]:
    """Photos whose every requested output is already there (a restart skips them)."""
    done = {p.name for p in images}
    if "png" in write:
        done &= {p.name for p in images if (output_dir / f"{p.stem}.png").exists()}
    if "cutout" in write:
        done &= {p.name for p in images if (output_dir / CUTOUTS / f"{p.stem}.png").exists()}
    if "rle" in write:
        # a line without its newline is a half-written row of a killed run: not done
        done &= {row.name for shard in output_dir.glob(SHARD_PATTERN) for row in scan_shard(shard)[0]}
    return done


def redo_wrong_sizes(output_dir: Path, write: list[str], images: list[Path], sizes: list[tuple[int, int]],
                     done: set[str], rank_zero: bool) -> set[str]:
    """`done` less the photos whose probability PNG or cut-out is missing or not of the photo's displayed `sizes`
    (h, w): an earlier predict.py read a phone photo's size without its EXIF orientation. Rank 0 removes their outputs
    and says so; they are predicted again."""
    folders = [d for d, kind in ((output_dir, "png"), (output_dir / CUTOUTS, "cutout")) if kind in write]
    wrong = []
    for photo, size in zip(images, sizes):
        files = [d / f"{photo.stem}.png" for d in folders]
        if photo.name in done and any(not f.is_file() or image_size(f) != size for f in files):
            wrong.append(photo)
    if wrong and rank_zero:
        found = next((f for f in (d / f"{wrong[0].stem}.png" for d in folders) if f.is_file()), None)
        shown = f"{found} is {'x'.join(map(str, image_size(found)))}, " if found else ""
        print(f"{len(wrong)} photo(s) have masks of another size than the photo in output_dir ({shown}{wrong[0].name} "
              f"is {'x'.join(map(str, sizes[images.index(wrong[0])]))} as displayed, height x width): predicted again",
              flush=True)
        remove_outputs(output_dir, wrong)
    return done - {p.name for p in wrong}


class Predictions(NamedTuple):
    """What predict.py wrote into a folder: the probability PNGs of its photos, and its RLE shards."""

    pngs: list[Path]
    shards: list[Path]


def find_predictions(directory: str | Path, key: str = "probs_dir") -> Predictions:
    """The predictions in `directory`: the PNGs of the photos predict.json records (every PNG when the folder has no
    record: predictions made elsewhere), and the RLE shards; a missing folder, or none of either, is a CarvanaError
    naming `key`."""
    directory = Path(directory)
    if not directory.is_dir():
        raise CarvanaError(f"{key}={directory} does not exist: give the output_dir of predict.py")
    recorded = {Path(name).stem for entry in read_manifest(directory) for name in entry["photos"]}
    pngs = sorted(p for p in directory.glob("*.png") if not is_temporary(p) and (not recorded or p.stem in recorded))
    shards = sorted(directory.glob(SHARD_PATTERN))
    if not pngs and not shards:
        raise CarvanaError(f"{key}={directory} holds no predictions (neither <photo>.png probabilities nor "
                           f"{SHARD_PATTERN} shards): run python predict.py ckpt=... output_dir={directory} first")
    return Predictions(pngs, shards)


def recorded_settings(directories: list[str | Path]) -> dict[str, list]:
    """Each setting predict.py recorded in the prediction folders (threshold, data_root, group, ...) -> its values,
    each once, sorted by their JSON text (several: folders, or photos of one folder, written with different values);
    a folder without predict.json records nothing."""
    values: dict[str, set[str]] = {}
    for entry in (e for d in directories for e in read_manifest(d)):
        for key, value in entry["settings"].items():
            values.setdefault(key, set()).add(json.dumps(value))
    return {key: [json.loads(v) for v in sorted(texts)] for key, texts in values.items()}


def _difference(others: list[dict], wanted: dict) -> str:
    """What differs between the recorded settings and the wanted ones, e.g. 'tta: none -> hflip'."""
    parts = []
    for key in COMPARED:
        before = {json.dumps(e["settings"].get(key)) for e in others}
        if before != {json.dumps(wanted[key])}:
            shown = _changed_checkpoints(others, wanted) if key == "checkpoints" else \
                f"{key}: {', '.join(sorted(before))} -> {json.dumps(wanted[key])}"
            parts.append(shown)
    return "; ".join(parts)


def _changed_checkpoints(others: list[dict], wanted: dict) -> str:
    """'ckpt=<path> changed since: SHA-256 <recorded> on record, <now> now' for a checkpoint recorded at the same path
    with other bytes (retrained, or damaged since); 'other checkpoints or weights' otherwise."""
    now = {c["path"]: c["sha256"] for c in wanted["checkpoints"]}
    changed = sorted({(c["path"], c["sha256"]) for e in others for c in e["settings"].get("checkpoints") or []
                      if c.get("path") in now and c.get("sha256") != now[c["path"]]})
    if not changed:
        return "other checkpoints or weights"
    path, before = changed[0]
    return f"ckpt={path} changed since: SHA-256 {before[:12]}... on record, {now[path][:12]}... now"
