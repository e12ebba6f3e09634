"""`ilora-predict ckpt_path=... history=[...]`: rank candidates (given, or shortlisted from the catalogue) for one user."""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig, ListConfig

from ilora.cli import CONFIG_PATH
from ilora.cli.common import task_wrapper, write_json
from ilora.cli.components import build_all
from ilora.cli.eval import model_config
from ilora.cli.runs import check_checkpoint_fits, claim_run_dir, load_trained_weights, run_or_exit
from ilora.data.datasets import original_item_ids
from ilora.errors import ConfigError, DataError

ID_PREFIX = "id:"


def resolve_items(values: Any, titles: Sequence[str], what: str) -> list[int]:
    """Item ids from `id:N` / integers (ids) or exact, case-insensitive titles (any string, digits too).

    A string is always a title, so titles such as "311" or "2002" can be named (quote them on the command
    line: `history=['311']`); `id:311` is always the id. A bare integer is an id, unless some title reads the
    same, which is refused as ambiguous rather than guessed. Unknown titles name the closest ones.
    """
    if isinstance(values, (str, int)):
        values = [values]
    if not isinstance(values, (list, tuple, ListConfig)) or len(values) == 0:
        raise DataError(f"{what} must be a non-empty list of item ids or titles, got {values!r}")
    by_title = {t.strip().lower(): i for i, t in enumerate(titles)}
    ids = []
    for value in values:
        text = str(value).strip()
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise DataError(f"{what}: {value!r} is neither an item id nor a title")
        if isinstance(value, int) or text.lower().startswith(ID_PREFIX):
            number = text[len(ID_PREFIX):].strip() if isinstance(value, str) else text
            if not number.lstrip("-").isdigit():
                raise DataError(f"{what}: {value!r} is not an item id (write id:<integer>)")
            item = int(number)
            if not 0 <= item < len(titles):
                raise DataError(f"{what}: unknown item id {item} (valid 0..{len(titles) - 1})")
            same = by_title.get(text.lower(), -1) if isinstance(value, int) else -1
            if same >= 0:
                raise DataError(
                    f"{what}: {value} is ambiguous: item id {value} ({titles[item]!r}) or the title {titles[same]!r} "
                    f"(id {same}); write id:{value} for the id or '{value}' (quoted) for the title"
                )
        else:
            item = by_title.get(text.lower(), -1)
            if item < 0:
                close = difflib.get_close_matches(text, titles, n=3)
                raise DataError(f"{what}: unknown title {value!r}" + (f" (did you mean {close}?)" if close else ""))
        ids.append(item)
    return ids


def shortlist(encoder: torch.nn.Module, history: list[int], size: int, padding_id: int) -> list[int]:
    """The encoder's top `size` next items over the whole catalogue, history excluded."""
    window = torch.full((1, max(len(history), 1)), padding_id, dtype=torch.long)
    window[0, : len(history)] = torch.tensor(history)
    with torch.no_grad():
        logits = encoder(window, torch.tensor([len(history)])).float()[0]  # [num_items]
    logits[history] = -torch.inf
    return logits.topk(size).indices.tolist()


@task_wrapper
def predict(cfg: DictConfig) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    run_cfg = model_config(cfg)
    run_cfg.trainer = {"accelerator": "cpu"}  # predict runs no Trainer: a GPU-trained checkpoint serves on a CPU
    check_checkpoint_fits(run_cfg, cfg.ckpt_path)
    claim_run_dir(cfg.paths.output_dir)
    parts = build_all(run_cfg)
    model, datamodule = parts["model"], parts["datamodule"]
    load_trained_weights(model, cfg.ckpt_path)

    titles = datamodule.titles
    history = resolve_items(cfg.history, titles, "history")
    if len(history) > datamodule.window:
        raise DataError(f"history has {len(history)} items; at most {datamodule.window} are used (drop the oldest)")
    if cfg.candidates is None:
        if int(cfg.shortlist) < 1 or int(cfg.shortlist) > len(titles) - len(set(history)):
            raise ConfigError(f"shortlist={cfg.shortlist} must be between 1 and the catalogue size minus the history")
        candidates = shortlist(parts["encoder"], history, int(cfg.shortlist), datamodule.padding_id)
    else:
        candidates = resolve_items(cfg.candidates, titles, "candidates")
    batch = datamodule.build_inference_batch([history], [candidates])
    record = model.evaluate_batch(batch)[0]
    order = sorted(range(len(candidates)), key=lambda j: -record["scores"][j])[: int(cfg.top_k)]
    ranked = [{"rank": r + 1, "item_id": candidates[j], "title": titles[candidates[j]], "score": record["scores"][j]}
              for r, j in enumerate(order)]
    original = original_item_ids(run_cfg.data.dir)  # a dataset built from ids of its own: name them too
    if original is not None:
        for row in ranked:
            row["original_id"] = original[row["item_id"]]
    out_dir = Path(cfg.paths.output_dir)
    write_json(out_dir / "predictions.json", {"history": history, "candidates": candidates, "ranked": ranked,
                                              "generated": record.get("generated"), "gate": record.get("gate")})
    return ranked, {"record": record, **parts}


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="predict")
def _hydra_main(cfg: DictConfig) -> None:
    ranked, objects = run_or_exit(predict, cfg)
    for row in ranked:
        own = f" ({row['original_id']})" if "original_id" in row else ""
        print(f"{row['rank']:3d}  {row['score']:9.3f}  [{row['item_id']}]{own} {row['title']}")
    if objects["record"].get("generated") is not None:
        print(f"generated: {objects['record']['generated']!r}")


def main() -> None:
    _hydra_main()


if __name__ == "__main__":
    main()
