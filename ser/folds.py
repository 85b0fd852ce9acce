"""Speaker-independent folds (`ser.train --split speaker --folds K`; docs/ser.md): K runs of ser.train in
OUT/fold1 ... OUT/foldK (a resumed run skips those finished), then their summary in OUT, metrics.json last."""
import os
import re
from dataclasses import replace

import numpy as np

from common.errors import UserError, log_errors_to
from common.files import write_json, write_text
from common.metrics import summarize
from common.results import accuracy_over, write_config, write_text_csv
from common.run import Run, run_info
from common.spec import run_spec
from common.stats import accuracy_interval, interval_text, intervals
from common.summary import read_metrics, test_predictions
from ser.data import find_clips, read_corpus
from ser.splits import check_fold_speakers

GENDER = re.compile(r"^([FM])\d+$")  # ShEMO's speaker ids: F01, M12


def run_folds(cfg, train, fingerprint) -> None:
    """Train every fold (`train`, `fingerprint`: ser.train's), then write their summary; the clips are read
    once, and every fold's split drawn and checked before anything is written."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise UserError("--folds runs its folds one after another in one process; start it without torchrun")
    folds = cfg.protocol.folds
    with Run(run_spec("ser.train", cfg), fingerprint=lambda: fingerprint(cfg),
             reads=(cfg.data_dir or cfg.manifest, cfg.model)) as run:
        if run.finished:
            return
        found = find_clips(cfg.data_dir, cfg.manifest)
        check_fold_speakers([c.speaker for c in found[0]], folds)
        first = read_corpus(found, replace(cfg.protocol, fold=1), cfg.seed, cfg.limit, cfg.strict, run.log)
        corpora = [first] + [first.split(replace(cfg.protocol, fold=k), cfg.seed, cfg.limit)
                             for k in range(2, folds + 1)]
        run.begin()
        write_config(cfg.out, run.spec.args, {"folds": folds, "protocol": cfg.protocol.description,
                                              "split_seed": cfg.protocol.seed_of_split(cfg.seed),
                                              "runs": [f"fold{k}" for k in range(1, folds + 1)]},
                     run_info(run.device), fingerprint(cfg))
        for k, corpus in enumerate(corpora, 1):
            fold = replace(cfg, out=cfg.out / f"fold{k}", protocol=replace(cfg.protocol, fold=k), overwrite=False)
            if (fold.out / "metrics.json").exists() and fold_results(fold.out) is None:
                run.log(f"fold {k}: the metrics.json or predictions.csv in {fold.out} cannot be read; training the "
                        "fold again")
                (fold.out / "metrics.json").unlink()  # (the file that marks the fold finished)
            run.log(f"== fold {k} of {folds} -> {fold.out}")
            train(fold, corpus)
            log_errors_to(cfg.out / "train.log")  # (the fold's run had its own log)
        write_fold_results(cfg, run.log)


def fold_results(folder) -> tuple[dict, list[dict]] | None:
    """A finished fold's metrics.json and the test rows of its predictions.csv, or None when
    either is missing or cannot be read (damaged, edited: rows that are not its test items)."""
    try:  # (test_predictions checks the rows against m: labels, item count, accuracy and macro F1)
        m = read_metrics(folder)
        tested = test_predictions(folder, m) if m is not None else None
    except (ValueError, KeyError, TypeError):  # (Damaged is a ValueError; an m of another shape)
        return None
    return (m, tested) if tested is not None and all(r.get("speaker") is not None for r in tested) else None


def write_fold_results(cfg, log) -> None:
    """folds.csv, report.txt and metrics.json (last) of the folds in cfg.out."""
    rows, pooled, names = [], [], None
    for k in range(1, cfg.protocol.folds + 1):
        folder = cfg.out / f"fold{k}"
        got = fold_results(folder)
        if got is None:  # (run_folds trains such a fold again; this one changed since)
            raise UserError(f"fold {k}'s metrics.json or predictions.csv in {folder} cannot be read; run the same "
                            "command with --resume to train that fold again")
        m, tested = got
        names, items, test = list(m["test"]["per_class"]), m["split_items"], m["test"]
        rows.append({"fold": k, "test_accuracy": test["accuracy"], "test_uar": test["uar"],
                     "test_macro_f1": test["macro_f1"], "val_accuracy": m["val"]["accuracy"],
                     **{f"{s}_items": items[s]["items"] for s in items},
                     **{f"{s}_speakers": items[s]["speakers"] for s in items}})
        pooled += tested
    true = np.array([names.index(r["true"]) for r in pooled])
    pred = np.array([names.index(r["predicted"]) for r in pooled])
    overall = {**summarize(true, pred, names), "intervals": intervals(true, pred, len(names))}
    correct = true == pred
    genders = np.array([(GENDER.match(r["speaker"]) or [None, None])[1] for r in pooled])
    by_gender = {g: {"items": int((genders == g).sum()), "accuracy": float(correct[genders == g].mean()),
                     "interval": accuracy_interval(correct[genders == g])} for g in ("F", "M") if (genders == g).any()}
    figures = {k: [r[f"test_{k}"] for r in rows] for k in ("accuracy", "uar", "macro_f1")}
    record = {"task": "ser", "experiment": cfg.protocol.name, "seed": cfg.seed, "protocol": cfg.protocol.description,
              "folds": cfg.protocol.folds, "per_fold": rows,
              "mean": {k: float(np.mean(v)) for k, v in figures.items()},
              "std": {k: float(np.std(v, ddof=1)) for k, v in figures.items()},
              "pooled": overall, "by_gender": by_gender}
    write_text_csv(cfg.out / "folds.csv", rows, list(rows[0]))
    write_text(cfg.out / "report.txt", fold_report(cfg, record))
    write_json(cfg.out / "metrics.json", record)  # last: marks the set of folds finished
    log(f"done: test accuracy over {cfg.protocol.folds} folds {record['mean']['accuracy']:.4f} ± "
        f"{record['std']['accuracy']:.4f}, UAR {record['mean']['uar']:.4f} ± {record['std']['uar']:.4f}; "
        f"results in {cfg.out}")


def fold_report(cfg, record: dict) -> str:
    """report.txt of the folds."""
    pooled = record["pooled"]
    lines = [f"Speech emotion recognition, {record['folds']} speaker-independent folds, model {cfg.model}, seed "
             f"{cfg.seed}", f"protocol: {record['protocol']}", "",
             "fold  test acc  test UAR  test F1  val acc  items train/val/test  speakers train/val/test"]
    lines += [f"{r['fold']:>4}  {r['test_accuracy']:.4f}    {r['test_uar']:.4f}    {r['test_macro_f1']:.4f}   "
              f"{r['val_accuracy']:.4f}   {r['train_items']}/{r['val_items']}/{r['test_items']}"
              f"{'':>10}{r['train_speakers']}/{r['val_speakers']}/{r['test_speakers']}" for r in record["per_fold"]]
    lines += ["", "mean ± std over folds: " + ", ".join(
                  f"{k} {record['mean'][k]:.4f} ± {record['std'][k]:.4f}" for k in ("accuracy", "uar", "macro_f1")),
              "every clip tested once, all folds pooled: " + ", ".join(
                  f"{k} {pooled[k]:.4f} {interval_text(pooled['intervals'][k])}"
                  for k in ("accuracy", "uar", "macro_f1")) + " (95% bootstrap intervals)",
              "test accuracy by the speaker's gender: " + ("; ".join(
                  f"{g} {accuracy_over(v, 'clips')}" for g, v in record["by_gender"].items())
                  or "n/a (speakers not named as ShEMO's)"),
              "", "each fold's own report: " + ", ".join(f"fold{r['fold']}/report.txt" for r in record["per_fold"]), ""]
    return "\n".join(lines)
