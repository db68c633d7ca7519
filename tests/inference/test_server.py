"""`medcad serve` in-process (FastAPI's TestClient): every route, every refused request with its message, the
bounded queue and timeouts, masks as PNG / run lengths and a DICOM SEG for a segmenter, the token."""

from __future__ import annotations

import base64
import io
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import openapi_spec_validator
import pydicom
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from serving import answer

from conftest import png_header, write_dicom
from medcad.inference.batcher import Batcher, QueueFull
from medcad.inference.outputs import no_finding_decisions
from medcad.inference.registry import load_predictor
from medcad.inference.responses import rle_decode, rle_encode
from medcad.inference.server import ServeOptions, check_bind, create_app
from medcad.inference.uploads import Limits

pytestmark = pytest.mark.usefixtures("one_thread")


def png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


def good_image(easy_set: Path) -> bytes:
    return (easy_set / "lesion" / "0.png").read_bytes()


def dicom_bytes(tmp_path: Path, pixels: bool = True) -> bytes:
    """A single-frame ultrasound DICOM with the identifiers a SEG must reference (and a patient name)."""
    from pydicom.uid import UltrasoundImageStorage, generate_uid

    path = write_dicom(tmp_path / "src.dcm", np.random.default_rng(0).integers(0, 60000, (1, 40, 40)))
    ds = pydicom.dcmread(path)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = UltrasoundImageStorage
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientName, ds.StudyID, ds.SeriesNumber, ds.InstanceNumber = "Doe^Jane", "1", 1, 1
    ds.StudyDate, ds.StudyTime, ds.AccessionNumber, ds.ReferringPhysicianName = "20260101", "101010", "A1", ""
    ds.PatientBirthDate, ds.PatientSex = "", ""
    if not pixels:
        del ds.PixelData
    ds.save_as(path, enforce_file_format=True)
    return path.read_bytes()


META_NAMING_A_FILE = (
    b"ObjectType = Image\nNDims = 2\nDimSize = 8 8\nElementType = MET_UCHAR\n"
    b"ElementDataFile = /etc/hostname\nElementDataFile = LOCAL\n" + bytes(64)
)


def nifti_claiming(dims: tuple[int, ...]) -> bytes:
    """A small .nii.gz whose header declares `dims` (int16 dim[1..] at byte 42) over 64 bytes of voxels: refused by
    its header, before anything is decompressed (it had been decompressed whole first)."""
    import gzip
    import struct

    header = bytearray(348)
    struct.pack_into("<i", header, 0, 348)
    struct.pack_into("<8h", header, 40, len(dims), *dims, *([1] * (7 - len(dims))))
    struct.pack_into("<hh", header, 70, 2, 8)  # uint8, 8 bits
    struct.pack_into("<f", header, 108, 352.0)  # vox_offset
    header[344:348] = b"n+1\0"
    return gzip.compress(bytes(header) + bytes(4) + bytes(64))


def bad_requests(image: bytes, tmp_path: Path) -> dict:
    """name -> (request kwargs, expected status, words the message must hold), for a server with a 1 MiB upload
    limit and 4 megapixels."""
    import SimpleITK as sitk

    big = Image.new("1", (10_000, 10_000))  # 100 megapixels, a few kB as PNG
    buf = io.BytesIO()
    big.save(buf, "PNG")
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((3, 1000, 2000), np.uint8)), str(tmp_path / "cine.nii.gz"))
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((8, 8), np.uint8)), str(tmp_path / "header.mhd"))  # + header.raw
    return {
        "empty body": (dict(content=b""), 400, "empty"),
        "empty file": (dict(files={"file": ("x.png", b"")}), 400, "empty"),
        "truncated": (dict(files={"file": ("x.png", image[: len(image) // 2])}), 422, "truncated"),
        "text": (dict(files={"file": ("x.png", b"patient: Doe, Jane" * 20, "image/png")}), 415, "not a PNG"),
        "100 MP": (dict(files={"file": ("x.png", buf.getvalue())}), 413, "megapixels"),
        "huge": (dict(files={"file": ("x.png", b"\x89PNG\r\n\x1a\n" + bytes(3 * 2**20))}), 413, "larger"),
        "huge streamed": (dict(content=iter([bytes(2**20)] * 3)), 413, "larger"),
        "field name": (dict(files={"image": ("x.png", image)}), 400, "field 'file'"),
        "no pixels": (dict(files={"file": ("x.dcm", dicom_bytes(tmp_path, pixels=False))}), 422, "no pixel data"),
        "video": (dict(files={"file": ("x.png", b"\0\0\0\x18ftypmp42" + bytes(100))}), 415, "/predict/video"),
        # 6 million voxels, under the 4-megapixel limit page by page: a volume decodes whole, so all its pages count
        "volume": (dict(files={"file": ("x", (tmp_path / "cine.nii.gz").read_bytes())}), 413, "2000 x 1000 x 3 voxels"),
        "volume header": (dict(files={"file": ("x", (tmp_path / "header.mhd").read_bytes())}), 415, "one NIfTI file"),
        "volume bomb": (dict(files={"file": ("x", nifti_claiming((30000, 30000, 1000)))}), 413, "30000 x 30000 x 1000"),
        # a MetaImage may name any file on the server as its voxels (ITK reads the first ElementDataFile): never taken
        "metaimage": (dict(files={"file": ("x", META_NAMING_A_FILE)}), 415, "may name any file as its voxel data"),
    }


def test_a_volume_upload_is_predicted_page_by_page(tiny_run: Path, easy_set: Path, tmp_path: Path) -> None:
    """A NIfTI upload (one file; compressed or not) is read as `medcad predict` reads it: `frame=` picks a page, the
    answer says how many there are, and each page's answer is that of the same pixels sent as a PNG. Its voxels are
    not kept once answered (a server had held the last four volumes it read)."""
    import SimpleITK as sitk

    from medcad.data import volumes

    pages = [np.asarray(Image.open(easy_set / label / "3.png").convert("L")) for label in ("lesion", "normal")]
    for name in ("cine.nii.gz", "cine.nii"):
        sitk.WriteImage(sitk.GetImageFromArray(np.stack(pages)), str(tmp_path / name))
    with TestClient(create_app(load_predictor(tiny_run, backend="torch-fp32"))) as client:
        for k, page in enumerate(pages):
            buf = io.BytesIO()
            Image.fromarray(page).save(buf, format="PNG")
            png = answer(client, client.post("/predict", files={"file": ("p.png", buf.getvalue())}))
            for name in ("cine.nii.gz", "cine.nii"):
                data = (tmp_path / name).read_bytes()
                body = answer(client, client.post(f"/predict?frame={k}", files={"file": ("x", data)}))
                assert (body["frame"], body["frames"], body["pages"], body["kind"]) == (k, 2, [0, 1], "nifti")
                assert body["probabilities"] == pytest.approx(png["probabilities"], abs=1e-6), (name, k)
    volumes._voxels.cache_clear()
    with TestClient(create_app(load_predictor(tiny_run, backend="torch-fp32"))) as client:
        answer(client, client.post("/predict", files={"file": ("x", (tmp_path / "cine.nii.gz").read_bytes())}))
    assert volumes._voxels.cache_len() == 0


def check_refusals(client, bad: dict, good) -> None:
    """Each bad request gets its 4xx and message, and the next good request still succeeds."""
    for name, (kwargs, status, words) in bad.items():
        r = client.post("/predict", **kwargs)
        assert r.status_code == status, (name, r.status_code, r.text)
        assert words in r.json()["detail"], (name, r.text)
        good()


def test_the_decisions_that_say_no_finding() -> None:
    """What the page's video timeline greys out and leaves out of its intervals, for each kind of task."""
    assert no_finding_decisions(("probabilities",), "single", ["benign", "Normal", "malignant"]) == ["Normal"]
    assert no_finding_decisions(("probabilities",), "single", ["benign", "malignant"]) == []  # each is a finding
    assert no_finding_decisions(("probabilities",), "multi", ["stone", "cyst"]) == ["none"]
    assert no_finding_decisions(("mask",), "single", ["lesion"]) == ["no lesion"]
    assert no_finding_decisions(("probabilities", "mask"), "single", ["lesion", "normal"]) == ["normal", "no lesion"]
    assert no_finding_decisions(("boxes",), "single", ["polyp"]) == ["background"]


def test_rle_round_trip() -> None:
    m = np.array([[0, 1, 1], [1, 0, 0]], bool)
    assert rle_encode(m) == [1, 3, 2] and rle_encode(~m) == [0, 1, 3, 2]
    rng = np.random.default_rng(0)
    for _ in range(5):
        m = rng.random((7, 9)) > 0.5
        assert (rle_decode(rle_encode(m), m.shape) == m).all()


def test_batcher_batches_and_refuses_when_full() -> None:
    gate, sizes = threading.Event(), []

    def run(items):
        gate.wait(5)
        sizes.append(len(items))
        return [i * 2 for i in items]

    b = Batcher(run, max_queue=3, max_batch=8)
    first = b.submit(1)
    time.sleep(0.3)  # the worker holds item 1 at the gate
    waiting = [b.submit(i) for i in (2, 3, 4)]
    with pytest.raises(QueueFull) as e:
        b.submit(5)
    assert e.value.retry_after >= 1
    gate.set()
    assert first.result(5) == 2 and [f.result(5) for f in waiting] == [4, 6, 8]
    assert sizes == [1, 3]  # the three that waited went in one batch
    b.close()


def test_classifier_routes_and_bad_requests(
    tiny_run: Path, easy_set: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="medcad.serve")
    predictor = load_predictor(tiny_run)
    limits = Limits(max_image_bytes=2**20, max_pixels=4_000_000)
    app = create_app(predictor, ServeOptions(limits=limits), explain=lambda rgb, prediction: (rgb, "identity"))
    image = good_image(easy_set)
    with TestClient(app) as client:
        assert client.get("/health").json()["status"] == "ok"
        card = client.get("/model").json()
        assert card["task"] == "classify" and card["labels"] == ["lesion", "normal"]
        assert set(card["metrics"]) == {"accuracy", "macro_f1", "macro_auc"}
        assert len(card["metrics"]["accuracy"]["ci95"]) == 2 and card["evaluation"]["how"] == "out-of-fold"
        page = client.get("/")
        assert page.status_code == 200 and "/static/app.js" in page.text and "https://" not in page.text
        assert card["no_finding"] == ["normal"]  # the page's video timeline lists the intervals of the rest
        # the page links its icon, and /favicon.ico (which browsers ask for elsewhere) answers it: it had been a 404
        assert '<link rel="icon" href="/static/favicon.svg"' in page.text
        for icon in ("/favicon.ico", "/static/favicon.svg"):
            r = client.get(icon)
            assert r.status_code == 200 and r.headers["content-type"].startswith("image/svg+xml"), icon
            assert r.text.startswith("<svg") and "http://www.w3.org/2000/svg" in r.text  # its namespace, not a link
        # a mask sent as an image, and a tiny image: predicted, with what makes the answer doubtful (had said nothing)
        mask = np.zeros((40, 40), np.uint8)
        mask[10:20, 10:20] = 255
        for arr, said in ((mask, "two grey values only"), (np.full((1, 1, 3), 120, np.uint8), "1x1 pixels")):
            buf = io.BytesIO()
            Image.fromarray(arr).save(buf, format="PNG")
            r = client.post("/predict", files={"file": ("x.png", buf.getvalue(), "image/png")})
            assert any(said in w for w in answer(client, r)["warnings"]), r.text
        for asset in ("app.js", "style.css"):
            body = client.get(f"/static/{asset}").text
            assert "http://" not in body and "https://" not in body  # works offline
        docs = client.get("/docs").text
        assert "cdn" not in docs.lower() and client.get("/openapi.json").json()["paths"]["/predict"]

        def good() -> None:
            r = client.post("/predict?overlay=true&gradcam=true", files={"file": ("scan.png", image, "image/png")})
            body = answer(client, r)
            assert body["label"] in ("lesion", "normal") and abs(sum(body["probabilities"].values()) - 1) < 1e-4
            assert body["overlay"].startswith("data:image/png;base64,") and body["heatmap"]["caption"] == "identity"
            assert "warnings" not in body
            assert "scan" not in r.text  # the upload's name is never echoed
            assert (body["width"], body["height"]) == (40, 40)

        good()
        assert client.post("/predict", content=image).json()["label"] in ("lesion", "normal")  # raw body works
        wide = dict(files={"file": ("x.png", png(np.zeros((8, 8, 3), np.uint8)))})
        check_refusals(client, bad_requests(image, tmp_path), good)
        refused = client.get("/health").json()["refused_by_status"]  # the uploads refused, by status
        assert refused == {"400": 3, "413": 5, "415": 4, "422": 2}, refused
        assert client.post("/predict?mask=jpeg", **wide).status_code == 400
        r = client.post("/predict?format=dicom", files={"file": ("x.dcm", dicom_bytes(tmp_path))})
        assert r.status_code == 400 and "needs a mask" in r.json()["detail"]
        r = client.post("/predict", files={"file": ("x.dcm", dicom_bytes(tmp_path))})
        assert r.status_code == 200 and "Doe" not in r.text  # DICOM headers are not echoed
        assert "frames" not in r.json()  # a single frame
        cine = write_dicom(tmp_path / "cine.dcm", np.arange(3 * 40 * 40).reshape(3, 40, 40) * 9).read_bytes()
        body = answer(client, client.post("/predict?frame=2", files={"file": ("c.dcm", cine)}))
        assert (body["frame"], body["frames"]) == (2, 3)  # it says which frame of how many it answers for
        r = client.post("/predict?frame=1", **wide)
        said = r.json()["detail"]  # a PNG may be animated; the request's frame at fault, not the file's decoding
        assert r.status_code == 422 and "frame=1 is beyond the upload's frames: it has 1 page(s)" in said, said
        r = client.post("/predict?frame=5", files={"file": ("c.dcm", cine)})
        assert r.status_code == 422 and "beyond the upload's frames: it has 3 frame(s)" in r.json()["detail"]
        jpeg = io.BytesIO()
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(jpeg, "JPEG")
        r = client.post("/predict?frame=1", files={"file": ("x.jpg", jpeg.getvalue())})
        assert r.status_code == 422 and "single JPEG image: frame 1 does not exist" in r.json()["detail"]
        assert client.get("/jobs/nope").status_code == 404
        # a parameter of the wrong type names itself and what it takes (a raw pydantic list had come back)
        r = client.post("/predict?overlay=maybe&frame=-1", **wide)
        assert r.status_code == 422 and r.json()["detail"] == (
            "query parameter overlay='maybe': give true or false; query parameter frame='-1': give a whole number "
            "from 0 on"
        )
        two = [("file", ("a.png", image)), ("file", ("b.png", image))]
        r = client.post("/predict", files=two)
        assert r.status_code == 400 and "one file per request" in r.json()["detail"]  # not 'malformed form'
        whole = client.get("/openapi.json").json()
        openapi_spec_validator.validate(whole)  # valid OpenAPI 3.1, as client generators read it
        spec = whole["paths"]  # both upload routes declare their body and errors
        for path, ok in (("/predict", "200"), ("/predict/video", "202")):
            assert "multipart/form-data" in spec[path]["post"]["requestBody"]["content"], path
            assert {ok, "400", "413", "415", "503"} <= set(spec[path]["post"]["responses"]), path
        assert {"422", "504"} <= set(spec["/predict"]["post"]["responses"])
        query = {q["name"]: q["schema"] for q in spec["/predict"]["post"]["parameters"]}  # the values it takes, listed
        assert query["mask"]["enum"] == ["png", "rle", "none"] and query["format"]["enum"] == ["json", "dicom"]
        assert "404" in spec["/jobs/{job}"]["get"]["responses"]  # an unknown or forgotten job (undeclared before)
    assert "POST /predict 200" in caplog.text and "POST /predict 413" in caplog.text
    assert "scan" not in caplog.text and "Doe" not in caplog.text  # no upload names, no DICOM headers in the log
    assert not app.state.workdir.exists()  # the temporary folder is gone at shutdown


def test_refusals_on_the_real_server(tiny_run: Path, easy_set: Path, tmp_path: Path) -> None:
    """The same refusals over real HTTP (uvicorn on loopback): a huge upload is refused by its Content-Length,
    a streamed one as its bytes pass the limit."""
    import httpx
    from serving import running

    limits = Limits(max_image_bytes=2**20, max_pixels=4_000_000)
    app = create_app(load_predictor(tiny_run), ServeOptions(limits=limits))
    image = good_image(easy_set)
    with running(app) as base, httpx.Client(base_url=base, timeout=60) as client:

        def good() -> None:
            assert client.post("/predict", files={"file": ("x.png", image)}).status_code == 200

        check_refusals(client, bad_requests(image, tmp_path), good)
        refused = client.get("/health").json()["refused_by_status"]  # the uploads refused, by status
        assert refused == {"400": 3, "413": 5, "415": 4, "422": 2}, refused


def test_queue_full_and_timeout(tiny_run: Path, easy_set: Path) -> None:
    predictor = load_predictor(tiny_run)
    gate = threading.Event()
    real = predictor.predict
    predictor.predict = lambda *a, **k: (gate.wait(10), real(*a, **k))[1]
    app = create_app(predictor, ServeOptions(max_queue=1, max_batch=1, timeout_s=1.5))
    image = good_image(easy_set)
    with TestClient(app) as client:
        results: list = []
        threads = [
            threading.Thread(target=lambda: results.append(client.post("/predict", content=image))) for _ in range(2)
        ]
        for t in threads:  # one held by the worker, one waiting: the queue is full
            t.start()
            time.sleep(0.4)
        r = client.post("/predict", content=image)
        assert r.status_code == 503 and int(r.headers["Retry-After"]) >= 1 and "busy" in r.json()["detail"]
        for t in threads:
            t.join()
        assert sorted(x.status_code for x in results) == [504, 504]  # no result within 1.5 s
        gate.set()
        for _ in range(50):  # the timed-out request leaves the queue when the worker reaches it
            if client.get("/health").json()["queued"] == 0:
                break
            time.sleep(0.1)
        assert client.post("/predict", content=image).status_code == 200
        health = client.get("/health").json()  # every refusal counts (it had counted the 503s alone)
        assert health["refused"] == 3 and health["refused_by_status"] == {"503": 1, "504": 2}


def test_token_and_bind(tiny_run: Path, easy_set: Path) -> None:
    with pytest.raises(Exception, match="token"):
        check_bind("0.0.0.0", None)
    check_bind("127.0.0.1", None)
    from typer.testing import CliRunner

    from medcad.cli import app as cli

    res = CliRunner().invoke(cli, ["serve", str(tiny_run), "--host", "0.0.0.0"])
    assert res.exit_code != 0 and "token" in res.output
    app = create_app(load_predictor(tiny_run), ServeOptions(token="s3cret"))
    with TestClient(app) as client:
        assert client.get("/health").status_code == 200 and client.get("/").status_code == 200
        assert client.get("/model").status_code == 401
        assert client.post("/predict", content=good_image(easy_set)).status_code == 401
        auth = {"Authorization": "Bearer s3cret"}
        assert client.post("/predict", content=good_image(easy_set), headers=auth).status_code == 200


def _finished(jobs, job: str) -> dict:
    for _ in range(300):
        state = jobs.get(job)
        if state["status"] in ("done", "failed"):
            return state
        time.sleep(0.05)
    raise AssertionError(f"job {job} did not finish: {state}")


def test_a_video_jobs_frames_keep_labels_that_read_as_missing_or_as_numbers(easy_set: Path, tmp_path: Path) -> None:
    """A video job's frames carry the model's labels as they are spelled: classes named "None" and "0" (a CSV's
    0 / 1 labels) had come back as null and 0 (the frames were read back from their CSV), and the page then listed
    "null" as a finding."""
    import cv2
    from test_video import make_video

    from medcad.config import TrainConfig
    from medcad.engine.train import train_run
    from medcad.inference.jobs import VideoJobs

    data = tmp_path / "spelled"
    for source, label in (("lesion", "None"), ("normal", "0")):
        (data / label).mkdir(parents=True)
        for f in (easy_set / source).glob("*.png"):
            (data / label / f.name).symlink_to(f)
    cfg = TrainConfig(image_size=32, epochs=1, head_epochs=1, batch_size=8, unfreeze=1, folds=2, val_fraction=0.25)
    train_run(data, tmp_path / "run", cfg, progress=False)
    predictor = load_predictor(tmp_path / "run", backend="torch-fp32")
    assert sorted(predictor.labels) == ["0", "None"]
    frames = [cv2.imread(str(p))[:, :, ::-1] for p in sorted((easy_set / "lesion").glob("*.png"))[:4]]
    clip = make_video(tmp_path / "clip.mp4", frames).read_bytes()
    jobs = VideoJobs(predictor, tmp_path / "work", Limits())
    (tmp_path / "work").mkdir()
    state = _finished(jobs, jobs.submit(clip))
    assert state["status"] == "done", state
    assert {f["label"] for f in state["frames"]} <= {"0", "None"}
    assert {f["smoothed"] for f in state["frames"]} <= {"0", "None"}
    assert all(isinstance(f["p_None"], float) for f in state["frames"])
    jobs.close()


def test_video_jobs_arriving_together_get_the_slots_there_are(tiny_run: Path, easy_set: Path, tmp_path: Path) -> None:
    """Clips uploaded at the same moment take the `max_jobs` slots there are and no more (each had been checked
    against the count before any was registered: 6 of 6 accepted with 2 slots), and no waiting job is forgotten."""
    import cv2
    from test_video import make_video

    from medcad.inference.jobs import VideoJobs

    predictor = load_predictor(tiny_run, backend="torch-fp32")
    gate, predict = threading.Event(), predictor.predict
    predictor.predict = lambda *a, **k: (gate.wait(), predict(*a, **k))[1]  # jobs wait until the uploads are in
    frames = [cv2.imread(str(p))[:, :, ::-1] for p in sorted((easy_set / "lesion").glob("*.png"))[:3]]
    clip = make_video(tmp_path / "clip.mp4", frames).read_bytes()
    (tmp_path / "work").mkdir()
    jobs = VideoJobs(predictor, tmp_path / "work", Limits(), max_jobs=2, keep=1)
    together = threading.Barrier(6)

    def upload() -> str | None:
        together.wait()
        try:
            return jobs.submit(clip)
        except QueueFull:
            return None

    try:
        with ThreadPoolExecutor(6) as pool:
            accepted = [j for j in pool.map(lambda _: upload(), range(6)) if j]
        assert len(accepted) == 2 and jobs.active() == 2
    finally:
        gate.set()
    assert [_finished(jobs, j)["status"] for j in accepted] == ["done", "done"]
    jobs.close()


def test_video_job(tiny_run: Path, easy_set: Path, tmp_path: Path) -> None:
    import cv2
    from test_video import make_video

    frames = [cv2.imread(str(p))[:, :, ::-1] for p in sorted((easy_set / "lesion").glob("*.png"))[:6]]
    clip = make_video(tmp_path / "clip.mp4", frames).read_bytes()
    app = create_app(load_predictor(tiny_run))
    with TestClient(app) as client:
        r = client.post("/predict/video", files={"file": ("clip.mp4", clip, "video/mp4")})
        url = answer(client, r, ("post", "/predict/video"))["status_url"]
        for _ in range(100):
            state = answer(client, client.get(url), ("get", "/jobs/{job}"))  # queued, running, done: as published
            if state["status"] in ("done", "failed"):
                break
            time.sleep(0.1)
        assert state["status"] == "done", state
        assert len(state["frames"]) == 6 and state["frames"][0]["label"] in ("lesion", "normal")
        assert {"smoothed", "p_lesion"} <= set(state["frames"][0])
        assert state["summary"]["smooth"] == 5  # the frames a smoothed decision averages over, for the page to say
        assert client.post("/predict/video", content=good_image(easy_set)).status_code == 415
        assert not list(app.state.workdir.iterdir())  # the clip is gone

        # an ultrasound cine loop (multi-frame DICOM) is a clip too, each frame timed by its Frame Time (it had been
        # refused: "POST it to /predict, each frame with ?frame=k"); each frame predicted as /predict predicts it
        grey = np.stack([f.mean(axis=2) for f in frames]).astype(np.uint16) * 16
        cine = write_dicom(tmp_path / "loop.dcm", grey, FrameTime=40).read_bytes()
        r = client.post("/predict/video", files={"file": ("loop.dcm", cine, "application/dicom")})
        assert r.status_code == 202, r.text
        for _ in range(100):
            state = answer(client, client.get(r.json()["status_url"]), ("get", "/jobs/{job}"))
            if state["status"] in ("done", "failed"):
                break
            time.sleep(0.1)
        assert state["status"] == "done", state
        assert [f["frame"] for f in state["frames"]] == list(range(6))
        assert [f["time_s"] for f in state["frames"]] == pytest.approx([0.04 * k for k in range(6)])
        one = client.post("/predict?frame=3", files={"file": ("loop.dcm", cine)}).json()
        assert state["frames"][3]["p_lesion"] == pytest.approx(one["probabilities"]["lesion"], abs=1e-5)
        single = write_dicom(tmp_path / "one.dcm", grey[:1]).read_bytes()
        r = client.post("/predict/video", files={"file": ("one.dcm", single)})
        assert r.status_code == 422 and "single-frame DICOM" in r.text and "/predict" in r.text


@pytest.mark.heavy
def test_segmenter_masks_and_dicom_seg(tiny_segmenter: Path, tmp_path: Path) -> None:
    predictor = load_predictor(tiny_segmenter, threshold=0.0)  # every pixel is lesion: a non-empty mask
    app = create_app(predictor)
    rgb = np.random.default_rng(1).integers(0, 255, (30, 50, 3), np.uint8)
    with TestClient(app) as client:
        card = client.get("/model").json()
        assert card["task"] == "segment" and set(card["metrics"]) == {"dice", "iou"}
        # the frame decision and its threshold (the folds' mean), and what the Dice is over (it had said neither)
        fd = card["frame_decision"]
        assert fd["score"] == "lesion_area" and fd["threshold"] == pytest.approx(predictor.min_frame_score)
        assert fd["threshold_of"] == "the mean of the fold models' thresholds" and "out_of_fold" in fd
        assert "before the frame decision" in card["metrics_note"] and card["decision"].startswith("the frame decision")
        assert "INTER_AREA (area averaging) when S < min(h, w)" in card["preprocessing"]["interpolation"]  # was null
        body = answer(client, client.post("/predict", content=png(rgb)))
        m = body["mask"]
        mask = np.asarray(Image.open(io.BytesIO(base64.b64decode(m["data"]))))
        assert mask.shape == (30, 50) and m["format"] == "png" and body["label"] == "lesion"
        rle = answer(client, client.post("/predict?mask=rle", content=png(rgb)))["mask"]
        assert (rle_decode(rle["counts"], (rle["height"], rle["width"])) == (mask > 0)).all()
        assert set(rle) == {"format", "height", "width", "threshold", "counts"}  # label maps' per_class: not here

        source = dicom_bytes(tmp_path)
        r = client.post("/predict?format=dicom", files={"file": ("x.dcm", source)})
        assert r.status_code == 200 and r.headers["content-type"] == "application/dicom", r.text
        seg = pydicom.dcmread(io.BytesIO(r.content))
        src = pydicom.dcmread(io.BytesIO(source))
        assert seg.Modality == "SEG" and seg.StudyInstanceUID == src.StudyInstanceUID
        ref = seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0]
        assert ref.ReferencedSOPInstanceUID == src.SOPInstanceUID and (seg.Rows, seg.Columns) == (40, 40)
        r = client.post("/predict?format=dicom", content=png(rgb))
        assert r.status_code == 400 and "needs a DICOM upload" in r.json()["detail"]
        src.SOPClassUID = "1.2.840.10008.5.1.4.1.1.6"  # US Image Storage (retired), as older scanners send
        retired = io.BytesIO()
        src.save_as(retired)
        r = client.post("/predict?format=dicom", files={"file": ("x.dcm", retired.getvalue())})
        assert r.status_code == 200, r.text  # had been a 500 (highdicom's KeyError)
        ref = pydicom.dcmread(io.BytesIO(r.content)).ReferencedSeriesSequence[0].ReferencedInstanceSequence[0]
        assert ref.ReferencedSOPClassUID == "1.2.840.10008.5.1.4.1.1.6"


def test_dicom_seg_of_a_class_map_has_a_segment_per_class(tmp_path: Path) -> None:
    import highdicom as hd

    from medcad.inference.responses import segmentation_dicom

    classes = np.zeros((40, 40), np.uint8)
    classes[5:15, 5:15], classes[20:35, 10:30] = 1, 2
    seg = hd.seg.segread(
        io.BytesIO(segmentation_dicom(pydicom.dcmread(io.BytesIO(dicom_bytes(tmp_path))), classes, ["cyst", "stone"]))
    )
    assert [d.SegmentLabel for d in seg.SegmentSequence] == ["cyst", "stone"]
    # each coded as the lesion type of DICOM's CID 7159 its name is, else as a lesion (every class had been "Lesion")
    coded = [d.SegmentedPropertyTypeCodeSequence[0] for d in seg.SegmentSequence]
    assert [(c.CodeValue, c.CodingSchemeDesignator, c.CodeMeaning) for c in coded] == [
        ("367643001", "SCT", "Cyst"),
        ("52988006", "SCT", "Lesion"),
    ]
    for number in (1, 2):
        frame = seg.get_pixels_by_source_instance(
            source_sop_instance_uids=[
                seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID
            ],
            segment_numbers=[number],
        )
        assert np.array_equal(frame[0, ..., 0] > 0, classes == number)


@pytest.mark.parametrize(
    ("label", "code"),
    [
        ("Cysts", "367643001"),
        ("masses", "4147007"),
        ("tumour", "108369006"),
        ("Tumors", "108369006"),
        ("haemorrhage", "50960005"),
        ("blood_clot", "75753009"),
        ("abscesses", "44132006"),
        ("polyp", "52988006"),
        ("normal", "52988006"),
        ("stones", "52988006"),
    ],
)
def test_a_segments_coded_type_follows_its_class_name(label: str, code: str) -> None:
    """A class named as people name them (plural, British spelling, underscores) is coded as the CID 7159 lesion type
    it names; a name that is none of them ("normal" and "background" included) is coded Lesion."""
    from medcad.inference.responses import lesion_type

    assert (lesion_type(label).value, lesion_type(label).scheme_designator) == (code, "SCT")


def test_a_cine_is_limited_by_the_pixels_of_the_frame_decoded(tmp_path: Path) -> None:
    """A DICOM cine whose frames together pass the pixel limit, each frame within it, is decoded (one frame)."""
    from medcad.inference.uploads import decode_upload

    cine = write_dicom(tmp_path / "cine.dcm", np.zeros((5, 1000, 1000), np.uint16)).read_bytes()
    upload = decode_upload(cine, tmp_path, Limits(max_pixels=4_000_000), frame=3)  # 5 MP in all, 1 MP a frame
    assert upload.rgb.shape == (1000, 1000, 3) and (upload.frame, upload.frames) == (3, 5)


def test_a_decompression_bomb_upload_is_refused_with_its_real_size(tmp_path: Path) -> None:
    """A 20000 x 20000 PNG (beyond twice Pillow's limit, where Pillow refuses before giving the size) is 400 megapixels
    in the 413's message (it had said 1600000000.0: the limit squared)."""
    from medcad.inference.uploads import UploadError, check_pixels

    png_header(tmp_path / "bomb.png", 20_000, 20_000)
    with pytest.raises(UploadError) as refused:
        check_pixels((tmp_path / "bomb.png").read_bytes(), "png", Limits(max_pixels=40_000_000))
    assert refused.value.status == 413 and "has 400.0 megapixels, more than this server's limit of 40" in str(
        refused.value
    )


def test_dicom_seg_of_a_source_without_type_2_attributes(tmp_path: Path) -> None:
    """A source lacking the patient's birth date and sex, the study's ID, time, accession number and referring
    physician (a de-identified export) gets a SEG with them empty (it had taken four requests, one per attribute)."""
    from medcad.inference.responses import TYPE2_FROM_SOURCE, segmentation_dicom

    source = pydicom.dcmread(io.BytesIO(dicom_bytes(tmp_path)))
    for keyword in ("PatientBirthDate", "PatientSex", "StudyID", "StudyTime", "AccessionNumber"):
        delattr(source, keyword)
    del source.ReferringPhysicianName
    seg = pydicom.dcmread(io.BytesIO(segmentation_dicom(source, np.eye(40, dtype=bool), "lesion")))
    assert all(keyword in seg for keyword in TYPE2_FROM_SOURCE) and seg.PatientSex == "" and seg.StudyID == ""
    assert seg.StudyInstanceUID == source.StudyInstanceUID and "PatientSex" not in source  # the source untouched


@pytest.mark.heavy
def test_detector_boxes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from medcad.config import TrainConfig
    from medcad.data.synthetic import generate_synthetic
    from medcad.engine.train import train_run

    monkeypatch.setenv("MEDCAD_CACHE_DIR", str(tmp_path / "cache"))
    data = generate_synthetic(tmp_path / "synth", n_patients=10, frames_per_patient=3, size=64, seed=2).parent
    cfg = TrainConfig(task="detect", image_size=64, epochs=1, batch_size=8, folds=2, val_fraction=0.25)
    train_run(data, tmp_path / "det", cfg, progress=False)
    app = create_app(load_predictor(tmp_path / "det", threshold=0.0))  # every box kept
    rgb = np.asarray(Image.open(next((data / "images").glob("*.png"))).convert("RGB"))
    with TestClient(app) as client:
        assert client.get("/model").json()["task"] == "detect"
        body = answer(client, client.post("/predict?overlay=true", content=png(rgb)))
        assert body["task"] == "detect" and "mask" not in body and isinstance(body["boxes"], list)
        for x0, y0, x1, y1, score, label in body["boxes"]:
            assert 0 <= x0 <= x1 <= 64 and 0 <= y0 <= y1 <= 64 and 0 <= score <= 1 and label in ("benign", "malignant")
        assert body["label"] in ("benign", "malignant", "background") and body["overlay"].startswith("data:")


def test_the_server_as_integrators_call_it(tiny_run: Path, capsys: pytest.CaptureFixture) -> None:
    """`medcad serve` writes its line per request (none had been written: its logger had no handler); the token's
    scheme is case-insensitive (RFC 7235) and a 401 names the scheme it wants (WWW-Authenticate); a viewer on
    another origin named by --cors-origin gets its browser's preflight answered without the token, others not;
    HEAD /health answers (uptime checks send it; it had been a 405)."""
    from medcad.cli.deploy import _log_requests
    from medcad.errors import ConfigError
    from medcad.inference.server import web_origin

    viewer, other = "https://viewer.example", "https://elsewhere.example"
    with pytest.raises(ConfigError, match="give a web origin, scheme://host"):
        web_origin("viewer.example")
    app = create_app(load_predictor(tiny_run), ServeOptions(token="s3cret", cors_origins=(viewer + "/",)))
    _log_requests()
    try:
        with TestClient(app) as client:
            refused = client.get("/model")
            assert refused.status_code == 401 and refused.headers["www-authenticate"] == 'Bearer realm="medcad"'
            assert client.get("/model", headers={"Authorization": "bearer s3cret"}).status_code == 200
            assert client.get("/model", headers={"Authorization": "Basic s3cret"}).status_code == 401
            ask = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization"}
            preflight = client.options("/predict", headers={"Origin": viewer, **ask})
            assert preflight.status_code == 200 and preflight.headers["access-control-allow-origin"] == viewer
            called = client.get("/model", headers={"Origin": viewer, "Authorization": "Bearer s3cret"})
            assert called.status_code == 200 and called.headers["access-control-allow-origin"] == viewer
            assert called.headers["access-control-expose-headers"] == "Retry-After"  # a 503's, readable by the page
            foreign = client.options("/predict", headers={"Origin": other, **ask})
            assert foreign.status_code == 400 and "access-control-allow-origin" not in foreign.headers
            assert client.head("/health").status_code == 200
            spec = client.get("/openapi.json").json()["paths"]  # one operation per route, its id fixed (not HEAD's)
            assert list(spec["/health"]) == ["get"]
    finally:
        served = logging.getLogger("medcad.serve")
        served.handlers.clear()
        served.setLevel(logging.NOTSET)
    err = capsys.readouterr().err
    assert "GET /model 401" in err and "GET /model 200" in err
    assert "OPTIONS /predict 200" in err and "OPTIONS /predict 400" in err  # preflights too (they had no line)


def test_a_page_of_a_tiff_is_held_to_the_pixel_limit(
    tiny_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A TIFF's pages have sizes of their own: an 8 x 8 page 0 before a 3000 x 3000 page 1 had passed the limit (page
    0's size) and been decoded. The server's own limit above the decoder's default applies to decoding too."""
    from medcad.data.io import DataError, read_image
    from medcad.data.pixel_limit import max_pixels
    from medcad.inference.uploads import UploadError, check_pixels

    path = tmp_path / "pages.tif"
    Image.new("L", (8, 8)).save(
        path, save_all=True, append_images=[Image.new("L", (3000, 3000))], compression="tiff_lzw"
    )
    data = path.read_bytes()
    check_pixels(data, "tiff", Limits(max_pixels=4_000_000), frame=0)
    with pytest.raises(UploadError) as refused:
        check_pixels(data, "tiff", Limits(max_pixels=4_000_000), frame=1)
    assert refused.value.status == 413 and "9.0 megapixels" in str(refused.value)
    with pytest.raises(UploadError) as refused:  # a GIF's canvas grows to a later frame placed beyond it
        check_pixels(_moved_gif_frame(3000), "gif", Limits(max_pixels=4_000_000), frame=1)
    assert refused.value.status == 413 and "9.0 megapixels" in str(refused.value)
    monkeypatch.setenv("MEDCAD_MAX_PIXELS", "4")
    with pytest.raises(DataError, match=r"3000x3000 \(page 1\) has 9 megapixels"):
        read_image(path, frame=1)
    with TestClient(create_app(load_predictor(tiny_run), ServeOptions(limits=Limits(max_pixels=120_000_000)))):
        assert max_pixels() == 120_000_000  # the server's limit (its decoder had stayed at MEDCAD_MAX_PIXELS's)
    from medcad.data.pixel_limit import allow_pixels

    allow_pixels(1_000_000)  # never lowered
    assert max_pixels() == 120_000_000


def _moved_gif_frame(offset: int) -> bytes:
    """An 8 x 8 GIF whose second 8 x 8 frame sits at (offset, offset): Pillow grows the canvas to hold it."""
    import struct

    frame = Image.new("P", (8, 8))
    frame.putpalette([0, 0, 0, 255, 255, 255] + [0] * 762)
    buf = io.BytesIO()
    frame.save(buf, "GIF")
    data = buf.getvalue()
    image = bytearray(data[data.index(b"\x2c") : -1])  # image descriptor and data, before the trailer
    image[1:5] = struct.pack("<HH", offset, offset)
    return data[:-1] + b"\x21\xf9\x04\x00\x00\x00\x00\x00" + bytes(image) + b"\x3b"


def test_a_bigtiff_upload_is_read_as_a_tiff(tmp_path: Path) -> None:
    """A BigTIFF (as tifffile and scanners' software write files near or past 4 GB, and any file with bigtiff=True)
    is decoded pixel for pixel, as `predict` reads it from disk, big-endian too; the server had refused it as no
    TIFF by its content (its signature, II+ / MM+, was not among the upload's)."""
    tifffile = pytest.importorskip("tifffile")
    from medcad.data.io import DataError, read_image
    from medcad.inference.uploads import UploadError, decode_upload

    rgb = (np.arange(48 * 64 * 3) % 251).astype(np.uint8).reshape(48, 64, 3)
    data = io.BytesIO()
    tifffile.imwrite(data, rgb, bigtiff=True)
    upload = decode_upload(data.getvalue(), tmp_path, Limits())
    assert upload.kind == "tiff" and np.array_equal(upload.rgb, rgb)
    (tmp_path / "little.tif").write_bytes(data.getvalue())
    assert np.array_equal(read_image(tmp_path / "little.tif"), rgb)
    # big-endian (Pillow reads no big-endian BigTIFF; tifffile does): read, by the server and by predict's reader
    tifffile.imwrite(tmp_path / "big.tif", rgb, bigtiff=True, byteorder=">")
    assert np.array_equal(decode_upload((tmp_path / "big.tif").read_bytes(), tmp_path, Limits()).rgb, rgb)
    assert np.array_equal(read_image(tmp_path / "big.tif"), rgb)
    # one neither reader decodes (LZW, which tifffile decodes only with imagecodecs, of 64-bit floats, which Pillow
    # lacks): named so, by both
    data = io.BytesIO()
    tifffile.imwrite(data, rgb[..., 0].astype(np.float64), compression="zlib")
    broken = bytearray(data.getvalue())
    with tifffile.TiffFile(io.BytesIO(bytes(broken))) as tif:
        offset = tif.pages[0].tags[259].valueoffset  # Compression: Deflate -> LZW
    broken[offset : offset + 2] = (5).to_bytes(2, "little")
    with pytest.raises(UploadError) as refused:
        decode_upload(bytes(broken), tmp_path, Limits())
    assert refused.value.status == 422 and "neither of medcad's TIFF readers decodes" in str(refused.value)
    (tmp_path / "lzw64.tif").write_bytes(bytes(broken))
    with pytest.raises(DataError, match="neither of medcad's TIFF readers decodes"):
        read_image(tmp_path / "lzw64.tif")


def test_the_request_log_writes_one_line_per_request_whatever_its_path(caplog: pytest.LogCaptureFixture) -> None:
    """A path with an encoded line feed (%0A) cannot write a log line of its own: control characters are escaped."""
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from medcad.inference.middleware import RequestLog

    caplog.set_level(logging.INFO, logger="medcad.serve")
    app = FastAPI()
    app.add_middleware(RequestLog)
    with TestClient(app) as client:
        assert client.get("/health%0AGET%20/predict%20200%201%20ms").status_code == 404
    lines = [r.getMessage() for r in caplog.records if r.name == "medcad.serve"]
    assert len(lines) == 1 and "\n" not in lines[0], lines
    assert lines[0].startswith("GET /health\\nGET /predict 200 1 ms 404 "), lines


def test_a_request_the_app_fails_on_is_answered_500_with_the_security_headers() -> None:
    """An exception in a route: the 500 had been the server's own, outside the guard, without its headers."""
    from collections import Counter

    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from medcad.inference.middleware import Guard

    app, refused = FastAPI(), Counter()

    @app.post("/predict")
    def fails() -> None:
        raise RuntimeError("a bug")

    app.add_middleware(Guard, token=None, refused=refused)
    with TestClient(app, raise_server_exceptions=False) as client:
        answer = client.post("/predict")
    assert answer.status_code == 500 and answer.json()["detail"].startswith("internal error"), answer.text
    assert answer.headers["X-Content-Type-Options"] == "nosniff" and answer.headers["Cache-Control"] == "no-store"
    assert "default-src 'self'" in answer.headers["Content-Security-Policy"] and refused == Counter({500: 1})


def test_the_published_answer_schema_refuses_what_it_does_not_declare() -> None:
    """The schema `answer` checks real answers against holds them to what it declares: an undeclared field, a box
    of another form or a mask of an unknown format fail; a label map's `fraction_<class>` passes."""
    import jsonschema

    from medcad.inference.answers import PredictAnswer

    schema = PredictAnswer.model_json_schema()
    body = {"task": "detect", "image": "upload", "label": "polyp", "score": 0.9, "threshold": 0.5}
    body |= {"width": 64, "height": 48, "boxes": [[1.0, 2.0, 30.5, 40.0, 0.9, "polyp"]], "fraction_cyst": 0.1}
    jsonschema.validate(body, schema)
    for wrong in ({"filename": "a.png"}, {"boxes": [[1, 2, 3, 4, "polyp"]]}, {"mask": {"format": "jpeg"}}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(body | wrong, schema)
