"""The library side of ``offmarl datasets convert`` and ``offmarl datasets export``.

    offmarl datasets convert SRC --from d4rl|minari --env ant-4x2 --obs fo|po|local --out FILE
        -> convert(SRC, fmt, env, obs, out)
    offmarl datasets convert X.vlt[/UID] --from vault --env ant-4x2 --obs fo --out FILE
        -> convert(SRC, "vault", env, obs, out)             (OG-MARL / flashbax vaults)
    offmarl datasets export NAME|FILE --to minari --id NAMESPACE/ENV/NAME-v0
        -> export(dataset_or_file, "minari", dataset_id)   (the CLI resolves NAME to a dataset)
    offmarl datasets export NAME|FILE --to vault --out X.vlt [--id UID]
        -> export(dataset_or_file, "vault", UID, out=X.vlt)
"""
from __future__ import annotations

import os
from pathlib import Path

from offmarl.data.dataset import DatasetError, MultiAgentDataset

IMPORT_FORMATS = ("d4rl", "minari", "vault", "offmarl")
EXPORT_FORMATS = ("minari", "vault")


def read_any(src: str | os.PathLike, fmt: str, env: str | None = None, obs: str | None = None) -> MultiAgentDataset:
    """Read ``src`` in format ``fmt`` (d4rl: a file; minari: an id or a directory; offmarl: a
    native file, optionally re-deriving observations for scheme ``obs``)."""
    if fmt == "d4rl":
        from offmarl.data.sources.d4rl import read_d4rl

        return read_d4rl(src, env=env or "ant-4x2", obs=obs or "fo")
    if fmt == "minari":
        from offmarl.data.sources.minari import read_minari

        return read_minari(src, env=env, obs=obs)
    if fmt == "vault":
        from offmarl.data.sources.vault import read_vault

        return read_vault(src, env=env, obs=obs)
    if fmt == "offmarl":
        from offmarl.data.storage import load_dataset_file

        ds = load_dataset_file(src, env=env)
        return ds.with_obs(obs) if obs is not None and obs != ds.meta.obs_scheme else ds
    raise DatasetError(f"unknown source format {fmt!r}; choose one of: {', '.join(IMPORT_FORMATS)}")


def convert(
    src: str | os.PathLike, fmt: str, env: str | None = "ant-4x2", obs: str | None = "fo",
    out: str | os.PathLike | None = None, force: bool = False,
) -> MultiAgentDataset:
    """Import ``src`` (format ``fmt``) for ``env`` / observation scheme ``obs`` and, when ``out``
    is given, save it as a native offmarl file there (atomically). An existing ``out`` is only
    replaced with ``force``; ``out`` is checked before the (possibly long) import. Returns the dataset."""
    from offmarl.data.storage import check_output_path, save_dataset

    if out is not None:
        out = Path(out)
        if Path(src).is_file() and out.exists() and out.resolve() == Path(src).resolve():
            raise DatasetError(f"{out}: --out is the source file itself; pick another output path")
        check_output_path(out, force)
    ds = read_any(src, fmt, env, obs)
    if out is not None:
        save_dataset(ds, out)
    return ds


def export(
    ds: MultiAgentDataset | str | os.PathLike, to: str, dataset_id: str | None, root: str | os.PathLike | None = None,
    out: str | os.PathLike | None = None,
) -> Path:
    """Export a dataset (in memory, or a native offmarl file) to another format; returns where it
    was written. ``to="minari"``: ``dataset_id`` is NAMESPACE/ENV/NAME-vN under ``root``
    (default $MINARI_DATASETS_PATH or ~/.minari/datasets). ``to="vault"``: the vault folder
    ``out`` (X.vlt), uid ``dataset_id`` (default: the dataset's name)."""
    if to not in EXPORT_FORMATS:
        raise DatasetError(f"unknown export format {to!r}; choose one of: {', '.join(EXPORT_FORMATS)}")
    if not isinstance(ds, MultiAgentDataset):
        from offmarl.data.storage import load_dataset_file

        ds = load_dataset_file(ds)
    if to == "vault":
        from offmarl.data.sources.vault import export_vault

        if out is None:
            raise DatasetError("export to a vault needs the vault folder (--out X.vlt)")
        return export_vault(ds, out, uid=dataset_id)
    if not dataset_id:
        raise DatasetError("export to Minari needs a dataset id (--id NAMESPACE/ENV/NAME-v0)")
    from offmarl.data.sources.minari import export_minari

    return export_minari(ds, dataset_id, root=root)
