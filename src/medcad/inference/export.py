"""Export a run of any task to ONNX (fp32, and int8 by static quantisation calibrated on validation images).

The graph takes float32 RGB images (N, 3, S, S) in 0..255, with normalisation inside, and returns what the task's
predictor names in `graph_outputs`: class probabilities (softmax and temperatures inside), the mean lesion
probability (N, S, S), or each detector's raw head outputs (box decoding runs in PyTorch after ONNX Runtime: see
medcad.inference.detections). `<name>.json` beside it records task, size, the exact resize rule, labels, the source
run and its fold models (paths relative to the run), and for mask outputs how predict turns them into its answer
(`mask_metadata`).
The export is checked against PyTorch fp32 with the task's agreement measure on fold k's test images (held out) for
fold k's model, on fold 0's test images (not held out: the ensemble's other models trained on them) for the ensemble.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from medcad.atomic import atomic_path, atomic_write_text
from medcad.data.datasets import BILATERAL, RESIZE_RULE
from medcad.data.io import DECODING
from medcad.errors import ConfigError, DataError
from medcad.inference.onnx import DEFAULT_BOXES, GRAPH_BACKENDS, GraphSession, nchw
from medcad.inference.predictor import MIN_AGREEMENT, Predictor
from medcad.runfolder import FoldFolder, RunFolder
from medcad.tasks import get_task


@dataclass(frozen=True)
class CheckImages:
    """The run's images an export or a benchmark is checked on, as the model's prepared uint8 input (N, S, S, 3).

    Attributes:
        calibration: images that may tune something (int8 calibration, the noisiest-layer choice).
        images: the images agreement (and, when `held_out`, accuracy) is measured on; never tuned on.
        labels: each of `images`' label index among the model's labels (0 for rows without one of them).
        held_out: True when no model of the predictor trained on `images` (one fold's model: its test images).
        described: which images these are, in words, for reports.
        calibration_described: which the calibration images are, in words ("3 validation and 17 training images
            of fold 0": a small validation part is topped up with training images).
        validation: the fold's validation images among `calibration` (the fold's model did not train on them; they
            chose its epoch; the ensemble's other members may have): `auto` adds them to a fold's few test images to
            check agreement on (not int8's).
    """

    calibration: np.ndarray
    images: np.ndarray
    labels: np.ndarray
    held_out: bool
    described: str
    calibration_described: str = ""
    validation: np.ndarray | None = None


def check_images(run: Path, predictor: Predictor, n: int = 128) -> CheckImages:
    """The images to check `predictor` (one fold's model or the fold ensemble of run folder `run`) on.

    One fold k's model: its validation images (calibration; topped up with its training images to `n` when fewer),
    its test images (held out from its training). The ensemble has no held-out image (each image trained all folds'
    models but one saw it in training): fold 0's parts are used the same way, with `held_out` False, so agreement
    between backends can be measured there but accuracy is not a held-out figure. Test images never tune anything.

    Raises:
        DataError: the run's data or splits cannot be read, or the splits have no fold k.
    """
    from medcad.data.datasets import run_images
    from medcad.data.splits import fold_indices, fold_split, load_splits
    from medcad.targets import run_dataset

    meta = json.loads(RunFolder(run).config.read_text())
    cfg = predictor.config
    manifest = run_dataset(meta["data"], cfg, run)
    # the folds of the ensemble's members (fold_<k>/model.pt): with one member (a holdout run, or one fold trained),
    # its own test images are held out from it
    members = sorted({FoldFolder(Path(f).parent).number for f in predictor.files})
    k = int(predictor.fold) if predictor.fold is not None else members[0]
    held_out = predictor.fold is not None or len(members) == 1
    folds = load_splits(RunFolder(run).splits, manifest)["folds"]
    split = fold_split(folds, k)
    if split is None:
        raise DataError(RunFolder(run).splits, f"no fold {k} in the splits (folds: {len(folds)})")
    parts = fold_indices(manifest, split)
    images = run_images(manifest, cfg, progress=False)
    rng = np.random.default_rng(0)
    calib = rng.permutation(parts["val"])[:n]
    if len(calib) < n:
        calib = np.concatenate([calib, rng.permutation(parts["train"])[: n - len(calib)]])
    y = np.array(
        [predictor.labels.index(v) if v in predictor.labels else 0 for v in manifest.table["label"].iloc[parts["test"]]]
    )
    if held_out:
        described = f"fold {k}'s test images (held out from its training)"
    else:
        others = [m for m in members if m != k]
        described = (
            f"fold {k}'s test images, not held out from the ensemble: seen in training by the model"
            f"{'s' * (len(others) != 1)} of fold{'s' * (len(others) != 1)} {', '.join(map(str, others))}"
        )
    n_val = min(len(parts["val"]), n)
    topped = f" and {len(calib) - n_val} training" if len(calib) > n_val else ""
    calibration = f"{n_val} validation{topped} images of fold {k}"
    validation = np.asarray(images[np.sort(calib[:n_val])])
    return CheckImages(
        np.asarray(images[np.sort(calib)]),
        np.asarray(images[parts["test"]]),
        y,
        held_out,
        described,
        calibration,
        validation,
    )


def export_onnx(
    predictor: Predictor,
    out: str | Path | None = None,
    *,
    int8: bool = False,
    opset: int = 17,
    device: str = "cpu",
) -> dict:
    """Write model.onnx (+ model.int8.onnx with `int8`) of `predictor`'s run and fold, and their JSON metadata;
    compare with PyTorch fp32 run on `device` (the graph itself is traced on the CPU). `predictor`: the run's
    torch-fp32 predictor on the CPU (medcad.inference.registry.export_run loads it from a run folder).

    Returns:
        {"files": [...], "agreement": {variant: {"n", the task's measures (top1_agreement / mask_dice /
        box_iou_agreement, max_prob_diff), "agrees": the task's measure >= MIN_AGREEMENT (else `--backend auto`
        never picks it)}}, "images": which images the agreement is on (`CheckImages.described`), "held_out": whether
        they are held out from the model's training (one fold's model: yes; the ensemble: no), "int8" (with `int8`:
        `quantize_int8`'s record), "box_decoding" (detect)}.

    Raises:
        DataError: the predictor's run is a model file, not a run folder.
        ConfigError: the model cannot be traced to ONNX.
    """
    run, fold = predictor.run, predictor.fold
    if not run.is_dir():
        raise DataError(run, "not a run folder")
    out = Path(out) if out else RunFolder(run).export(fold)
    out.mkdir(parents=True, exist_ok=True)
    size = predictor.config.image_size
    graph = predictor.graph()
    names = list(predictor.graph_outputs)
    fp32 = out / "model.onnx"
    with warnings.catch_warnings(), atomic_path(fp32) as tmp:
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(
                graph,
                (torch.zeros(1, 3, size, size),),
                str(tmp),
                input_names=["images"],
                output_names=names,
                dynamic_axes={n: {0: "n"} for n in ["images", *names]},
                opset_version=opset,
                dynamo=False,
            )
        except Exception as e:  # the exporter raises many types; the user needs the model and the reason
            raise ConfigError(
                f"{run}: cannot export this {predictor.task} model to ONNX ({type(e).__name__}: {str(e)[:300]}); "
                "the torch backends still work"
            ) from e
    check = check_images(run, predictor)
    calib, held_out = check.calibration, check.images
    files = [fp32]
    int8_choice = None
    if int8:
        reference = predictor.infer(calib, 16)

        def agreement_on_calibration(path: Path) -> float:
            got = predictor.decode(GraphSession(path, "onnx-int8").run(calib, 16))
            return float(predictor.agreement(reference, got)[predictor.agreement_measure])

        int8_choice = quantize_int8(fp32, out / "model.int8.onnx", calib, agreement_on_calibration)
        int8_choice["calibration"] = check.calibration_described
        files.append(out / "model.int8.onnx")
    meta = {
        "format": "medcad-onnx-1",
        "task": predictor.task,
        "outputs": names,
        "labels": predictor.labels,
        "image_size": size,
        "input": "float32 RGB (N, 3, S, S), 0..255, each image decoded by `decoding`, prepared by `before_resize` "
        "and resized to S x S by `interpolation`",
        "decoding": DECODING,
        "before_resize": _before_resize(predictor.config.bilateral, predictor.config.interface),
        "interpolation": RESIZE_RULE,
        "bilateral": predictor.config.bilateral,
        "interface": predictor.config.interface,
        "mean": predictor.data_config["mean"],
        "std": predictor.data_config["std"],
        "normalisation": "inside the graph",
        "source_run": str(run.resolve()),
        "fold": fold,
        "reference_device": device,
        "members": [f.resolve().relative_to(run.resolve()).as_posix() for f in predictor.files],
        "members_relative_to": "source_run",
    }
    if "probabilities" in names:
        meta["probabilities"] = probabilities_metadata(predictor)
    if "mask" in names:
        meta["mask"] = mask_metadata(predictor)
    if "boxes" in get_task(predictor.task).outputs:
        meta["box_decoding"] = predictor.decoding()
        with atomic_path(out / DEFAULT_BOXES) as tmp:  # what decoding the graph's offsets needs, beside it
            np.savez(tmp, **predictor.default_boxes())
    if device != "cpu":
        ref = type(predictor)(run, fold, "torch-fp32", device=device).infer(held_out, 16)
    else:
        ref = predictor.infer_once(held_out, 16)  # within `auto`'s measurement, its reference too
    agreement = {}
    for f in files:
        int8_file = f.name.endswith("int8.onnx")
        described = {**meta, "file": f.name} | ({"int8": int8_choice} if int8_file else {})
        atomic_write_text(f.with_suffix(".json"), json.dumps(described, indent=1))
        got = predictor.decode(GraphSession(f, "onnx-int8" if int8_file else "onnx-fp32").run(held_out, 16))
        measures = predictor.agreement(ref, got)
        agrees = measures[predictor.agreement_measure] >= MIN_AGREEMENT
        agreement[f.name] = {"n": len(held_out), **measures, "agrees": bool(agrees)}
        described["agreement"] = {  # with torch-fp32, as the export measured it: a file that does not agree is never
            **agreement[f.name],  # `auto`'s choice
            "measure": predictor.agreement_measure,
            "needed": MIN_AGREEMENT,
            "images": check.described,
        }
        atomic_write_text(f.with_suffix(".json"), json.dumps(described, indent=1))
    result = {"files": [str(f) for f in files], "agreement": agreement, "images": check.described}
    result["held_out"] = check.held_out
    if int8_choice is not None:
        result["int8"] = int8_choice
    return result | ({"box_decoding": meta["box_decoding"]} if "box_decoding" in meta else {})


def _before_resize(bilateral: bool, interface: str) -> str:
    """What a run does to a decoded image before resizing it (`medcad.data.datasets.preprocess`), in words."""
    steps = []
    if interface != "none":
        steps.append(
            f"ultrasound interface removal '{interface}' (medcad.data.interface.remove_interface: crop to the imaging "
            "area"
            + (", then burned-in marks inpainted with OpenCV's Telea" if interface == "crop+marks" else "")
            + "; found from each image's own pixels, not reproducible from this description alone)"
        )
    if bilateral:
        steps.append(
            f"bilateral filter, cv2.bilateralFilter(rgb, {', '.join(f'{k}={v}' for k, v in BILATERAL.items())})"
        )
    return "; then ".join(steps) if steps else "nothing"


def probabilities_metadata(predictor: Predictor) -> str:
    """What the graph's `probabilities` output is and how predict decides from it, in words."""
    per_model = (
        f"each label's sigmoid; predict names every label at or above {predictor.threshold:g} (its --threshold)"
        if get_task(predictor.task).label_kind == "multi"
        else "the softmax of the logits divided by the temperature fitted on validation (inside the graph: apply "
        "none again); predict names the most probable class, or at `--operating-point` the positive class where its "
        "probability reaches that rule's threshold (in the model card)"
    )
    n = len(predictor.files)
    return f"float32 (N, {len(predictor.labels)}) in `labels` order: " + (
        f"the mean over the {n} fold models of {per_model}" if n > 1 else per_model
    )


def mask_metadata(predictor: Predictor) -> dict:
    """How predict turns the graph's `mask` output (and `lesion_classes` of label-map models) into its answer, so
    that a user of the ONNX file can reproduce it (medcad.inference.outputs.LesionMask)."""
    from medcad.inference.card import frame_decision

    n = len(predictor.files)
    flip = "each model's mean over the image and its horizontal mirror (test-time flip, inside the graph)"
    what = (
        "lesion probability per pixel, float32 (N, S, S) in [0, 1] at the model's input size S x S: "
        + (f"the mean over the {n} fold models of " if n > 1 else "")
        + (flip if predictor.hflip else "the model's probability (no test-time flip)")
    )
    out = {
        "what": what,
        "to_image": (
            "predict resizes it to the image's (h, w) with bilinear interpolation (OpenCV INTER_LINEAR) and calls a "
            f"pixel lesion where the resized probability >= {predictor.threshold:g} (predict's --threshold)"
        ),
        "frame_decision": frame_decision(predictor),
        "frame_decision_applied": (
            "the frame is 'lesion' and its mask is shown only when frame_decision's rule holds; else 'no lesion' and "
            "an empty mask"
        ),
    }
    if "lesion_classes" in predictor.graph_outputs:
        out["lesion_classes"] = (
            "float32 (N, K, S, S): the mean probability of each lesion class (`labels`); predict resizes each "
            "bilinearly to the image and gives a shown lesion pixel the class of highest probability"
        )
    return out


def ensure_export(
    cls: type[Predictor],
    run: Path,
    fold: int | None,
    backend: str,
    threads: int | None = None,
    reference: Predictor | None = None,
) -> None:
    """Export the run (with int8 for an int8 backend) when `backend` runs a graph that is not written yet, from
    `reference` (a torch-fp32 predictor of the run's `fold` on the CPU, whose networks are then not built again), else
    from a new torch-fp32 `cls` on the CPU. Nothing for torch backends or model files."""
    run = Path(run)
    if backend not in GRAPH_BACKENDS or not run.is_dir():
        return
    folder = RunFolder(run).export(fold)
    int8 = backend.endswith("int8")
    if not (folder / ("model.int8.onnx" if int8 else "model.onnx")).is_file():
        usable = reference is not None and reference.backend == "torch-fp32" and reference.device.type == "cpu"
        export_onnx(reference if usable else cls(run, fold, "torch-fp32", threads), folder, int8=int8)


MIN_GAIN = 0.005  # agreement a doubling of the float layers must add for the next one to be tried


def quantize_int8(src: Path, dst: Path, calib: np.ndarray, agreement) -> dict:
    """Static int8 (per-channel symmetric weights, activations calibrated on `calib`, the run's validation images)
    that agrees with fp32, or the closest found, with what was tried.

    Depthwise convolutions always stay in float (quantising them cost EfficientNet-Lite0 on BUSI 3 points of top-1
    agreement for little speed). Then, while `agreement(path)` on the calibration images is below MIN_AGREEMENT, the
    layers whose own quantisation noise is largest (lowest signal-to-quantisation-noise ratio of their input
    activations, onnxruntime.quantization.qdq_loss_debug) are kept in float, 2, 4, 8, ... of them, up to half of the
    quantisable layers, and no further once a doubling gains less than MIN_GAIN (the loss is not in those layers:
    on a tiny U-Net, 0 to 64 layers in float all agreed 0.82, and the loop cost 86 s). On CPUs without VNNI weights
    use 7 bits (`reduce_range`): their u8s8 kernels saturate otherwise. Both formats (QDQ, QOperator) are built at
    the chosen layer set; the one that agrees best is kept.

    Returns:
        {"agreement_calibration", "format", "float_layers" (names kept in float beyond the depthwise ones),
        "reduce_range", "tried": [{"float_layers": n, "format", "agreement"}]}. The files it makes on the way are
        removed, also where it fails.
    """
    if len(calib) == 0:
        raise ConfigError("no images to calibrate int8 quantisation")
    pre = dst.with_suffix(".pre.onnx")
    try:
        return _quantize_best(src, dst, pre, calib, agreement)
    finally:
        for p in (pre, *dst.parent.glob(f"{dst.stem}.tmp{os.getpid()}.*.onnx")):
            p.unlink(missing_ok=True)


def _quantize_best(src: Path, dst: Path, pre: Path, calib: np.ndarray, agreement) -> dict:
    """`quantize_int8`'s search, its files beside `dst` (`pre`, the graph prepared for quantisation; candidates)."""
    import onnx
    from onnxruntime.quantization import QuantFormat
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from medcad.devices import machine

    quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
    nodes = onnx.load(str(pre)).graph.node
    depthwise = [
        n.name for n in nodes if n.op_type == "Conv" and any(a.name == "group" and a.i > 1 for a in n.attribute)
    ]
    quantisable = [n.name for n in nodes if n.op_type in ("Conv", "Gemm", "MatMul") and n.name not in depthwise]
    reduce_range = not machine().vnni
    tried: list[dict] = []

    def candidate_path(extra: list[str], fmt) -> Path:
        return dst.with_suffix(f".tmp{os.getpid()}.{fmt.name}{len(extra)}.onnx")

    def build(extra: list[str], fmt) -> tuple[Path, float]:
        tmp = candidate_path(extra, fmt)
        _quantize_static(pre, tmp, calib, depthwise + extra, fmt, reduce_range)
        value = agreement(tmp)
        tried.append({"float_layers": len(extra), "format": fmt.name, "agreement": round(value, 4)})
        return tmp, value

    extra: list[str] = []
    path, value = build(extra, QuantFormat.QDQ)  # the best QDQ model so far, its agreement and float layers
    ranked: list[str] | None = None
    k, gain = 2, 1.0
    while value < MIN_AGREEMENT and k <= len(quantisable) // 2 and gain >= MIN_GAIN:
        ranked = ranked or _noisiest_layers(pre, path, calib, quantisable)
        more = ranked[:k]
        candidate, candidate_value = build(more, QuantFormat.QDQ)
        gain, k = candidate_value - value, k * 2
        if gain > 0:  # keep the better of the two (more float layers had once agreed less: 0.859 after 0.867)
            path.unlink(missing_ok=True)
            path, value, extra = candidate, candidate_value, more
        else:
            candidate.unlink(missing_ok=True)
    try:
        other, other_value = build(extra, QuantFormat.QOperator)
    except Exception as e:  # the quantiser fails on some graphs ("Graph is not a DAG"): QDQ stays
        tried.append({"float_layers": len(extra), "format": "QOperator", "error": f"{type(e).__name__}: {e}"})
        other, other_value = candidate_path(extra, QuantFormat.QOperator), -1.0
    best, best_value, fmt = (other, other_value, "QOperator") if other_value > value else (path, value, "QDQ")
    os.replace(best, dst)
    return {
        "agreement_calibration": round(best_value, 4),
        "format": fmt,
        "float_layers": extra,
        "depthwise_in_float": len(depthwise),
        "reduce_range": reduce_range,
        "calibration_images": int(len(calib)),
        "tried": tried,
    }


def _calibration_reader(calib: np.ndarray):
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{"images": nchw(calib[i : i + 8])} for i in range(0, len(calib), 8)])

        def get_next(self):
            return next(self.batches, None)

    return Reader()


def _quantize_static(pre: Path, dst: Path, calib: np.ndarray, exclude: list[str], fmt, reduce_range: bool) -> None:
    import logging

    from onnxruntime.quantization import QuantType, quantize_static

    logging.disable(logging.WARNING)  # the quantiser logs every tensor it leaves in float on the root logger
    try:
        quantize_static(
            str(pre),
            str(dst),
            _calibration_reader(calib),
            quant_format=fmt,
            per_channel=True,
            reduce_range=reduce_range,
            activation_type=QuantType.QInt8 if fmt.name == "QDQ" else QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=exclude,
            extra_options={"ActivationSymmetric": fmt.name == "QDQ"},
        )
    finally:
        logging.disable(logging.NOTSET)


def _noisiest_layers(float_model: Path, qdq_model: Path, calib: np.ndarray, layers: list[str]) -> list[str]:
    """`layers` ordered by the quantisation noise of their input activation (lowest SQNR first), measured on up to
    32 calibration images with onnxruntime's QDQ debugging tools."""
    import onnx
    from onnxruntime.quantization.qdq_loss_debug import (
        collect_activations,
        compute_activation_error,
        create_activation_matching,
        modify_model_output_intermediate_tensors,
    )

    sample = calib[:32]
    aug_q, aug_f = qdq_model.with_suffix(".aug.onnx"), float_model.with_suffix(".aug.onnx")
    try:
        modify_model_output_intermediate_tensors(qdq_model, aug_q)
        modify_model_output_intermediate_tensors(float_model, aug_f)
        q = collect_activations(str(aug_q), _calibration_reader(sample))
        f = collect_activations(str(aug_f), _calibration_reader(sample))
        errors = compute_activation_error(create_activation_matching(q, f))
    finally:
        aug_q.unlink(missing_ok=True)
        aug_f.unlink(missing_ok=True)
    inputs = {n.name: n.input[0] for n in onnx.load(str(float_model)).graph.node if n.name in set(layers)}
    sqnr = {name: errors.get(tensor, {}).get("qdq_err", np.inf) for name, tensor in inputs.items()}
    return sorted(layers, key=lambda n: sqnr.get(n, np.inf))
