"""Token merging (ToMe) in the exported graph against an independent reference: a ViT in
timm's layout and Bolya et al.'s algorithm written here from the paper and its reference
code (facebookresearch/ToMe: `tome/merge.py`, `tome/patch/timm.py`), with PyTorch's own
scatter_reduce, not vitedge's model or graph. vitedge's merged ONNX must give its logits on
ONNX Runtime and OpenVINO, merge input-dependently, and pass TensorRT's parser."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from torch import nn

from tests.conftest import FIXTURES, ROOT, relative_error, run_cli
from vitedge.export import ExportOptions, export_onnx

PHOTOS = sorted((ROOT / "vitedge" / "data" / "photos").glob("*.jpg"))
DIM, HEADS, DEPTH, PATCH, SIZE, CLASSES = 96, 3, 4, 8, 64, 7
TOL = 1e-4


# --- the reference: a timm-layout ViT and ToMe, in plain PyTorch ------------------------------

def bipartite_soft_matching(metric: torch.Tensor, r: int) -> tuple[torch.Tensor, ...]:
    """ToMe's matching with a class token (tome/merge.py): A = even tokens, B = odd; the
    class token's edges -inf; the r best edges (A token -> its most similar B token by the
    cosine of the metric) merged. Returns the kept A tokens (sorted), the merged A tokens
    and their B partners, each (n, k, 1)."""
    t = metric.shape[1]
    r = min(r, (t - 1) // 2)
    metric = metric / metric.norm(dim=-1, keepdim=True)
    a, b = metric[..., ::2, :], metric[..., 1::2, :]
    scores = a @ b.transpose(-1, -2)
    scores[..., 0, :] = -math.inf
    node_max, node_idx = scores.max(dim=-1)
    edge_idx = node_max.argsort(dim=-1, descending=True)[..., None]
    unm_idx = edge_idx[..., r:, :].sort(dim=1)[0]
    src_idx = edge_idx[..., :r, :]
    dst_idx = node_idx[..., None].gather(dim=-2, index=src_idx)
    return unm_idx, src_idx, dst_idx


def merge(indices: tuple[torch.Tensor, ...], x: torch.Tensor) -> torch.Tensor:
    """Kept A tokens, then B with the merged A tokens summed into their partners."""
    unm_idx, src_idx, dst_idx = indices
    src, dst = x[..., ::2, :], x[..., 1::2, :]
    n, t1, c = src.shape
    r = src_idx.shape[1]
    unm = src.gather(dim=-2, index=unm_idx.expand(n, t1 - r, c))
    src = src.gather(dim=-2, index=src_idx.expand(n, r, c))
    dst = dst.scatter_reduce(-2, dst_idx.expand(n, r, c), src, reduce="sum")
    return torch.cat([unm, dst], dim=1)


class RefBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(DIM, eps=1e-6), nn.LayerNorm(DIM, eps=1e-6)
        self.attn = nn.Module()
        self.attn.qkv, self.attn.proj = nn.Linear(DIM, 3 * DIM), nn.Linear(DIM, DIM)
        self.mlp = nn.Module()
        self.mlp.fc1, self.mlp.fc2 = nn.Linear(DIM, 2 * DIM), nn.Linear(2 * DIM, DIM)

    def attention(self, x: torch.Tensor, size: torch.Tensor | None):
        """tome/patch/timm.py's ToMeAttention: proportional attention, keys' head mean."""
        b, n, c = x.shape
        qkv = self.attn.qkv(x).reshape(b, n, 3, HEADS, c // HEADS).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = (q @ k.transpose(-2, -1)) * (c // HEADS) ** -0.5
        if size is not None:
            attn = attn + size.log()[:, None, None, :, 0]
        self.probs = attn.softmax(dim=-1)
        x = (self.probs @ v).transpose(1, 2).reshape(b, n, c)
        return self.attn.proj(x), k.mean(1)

    def forward(self, x, size, r, record, replay):
        """tome/patch/timm.py's ToMeBlock: merge (size-weighted) between attention and MLP;
        `replay`: the merges to make instead of matching (a pattern fixed in advance)."""
        a, metric = self.attention(self.norm1(x), size)
        x = x + a
        if r > 0:
            indices = replay if replay is not None else bipartite_soft_matching(metric, r)
            record.append(indices)
            size = torch.ones_like(x[..., 0, None]) if size is None else size
            x, size = merge(indices, x * size), merge(indices, size)
            x = x / size
        return x + self.mlp.fc2(torch.nn.functional.gelu(self.mlp.fc1(self.norm2(x)))), size


class RefViT(nn.Module):
    """timm's VisionTransformer (class token, pre-norm blocks, token pooling), small."""

    def __init__(self) -> None:
        super().__init__()
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(3, DIM, PATCH, PATCH)
        self.cls_token = nn.Parameter(torch.randn(1, 1, DIM) * 0.5)
        self.pos_embed = nn.Parameter(torch.randn(1, 1 + (SIZE // PATCH) ** 2, DIM) * 0.5)
        self.blocks = nn.ModuleList(RefBlock() for _ in range(DEPTH))
        self.norm = nn.LayerNorm(DIM, eps=1e-6)
        self.head = nn.Linear(DIM, CLASSES)

    def forward(self, images: torch.Tensor, r: int = 0, record: list | None = None,
                replay: list | None = None) -> torch.Tensor:
        x = self.patch_embed.proj(images).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        size, record = None, [] if record is None else record
        for i, block in enumerate(self.blocks):
            x, size = block(x, size, r, record, None if replay is None else replay[i])
        return self.head(self.norm(x)[:, 0])


def reference(tmp_path: Path) -> tuple[RefViT, Path]:
    torch.manual_seed(0)
    model = RefViT()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape) * 0.05)
    path = tmp_path / "vit_timm.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return model.eval(), path


def photos() -> np.ndarray:
    """The bundled photos at 64x64, scaled to about [-2, 2]: real images, whose neighbouring
    patches are alike, as merging expects."""
    return np.stack([(np.asarray(Image.open(p).convert("RGB").resize((SIZE, SIZE)), np.float32)
                      .transpose(2, 0, 1) / 255.0 - 0.5) / 0.25 for p in PHOTOS])


def export(checkpoint: Path, out: Path, merge: int | None) -> Path:
    export_onnx(checkpoint, out, ExportOptions(num_heads=HEADS, merge=merge))
    return out


@pytest.fixture(scope="module")
def ref(tmp_path_factory: pytest.TempPathFactory) -> tuple[RefViT, Path]:
    """The reference model and its checkpoint, made once for the module."""
    return reference(tmp_path_factory.mktemp("ref"))


@pytest.fixture(scope="module")
def exported(ref, tmp_path_factory: pytest.TempPathFactory):
    """`exported(r)`: the reference checkpoint exported with r merged per block (None:
    unmerged), each r exported once for the module's tests that only read the graph."""
    folder = tmp_path_factory.mktemp("exported")
    made: dict[int | None, Path] = {}

    def get(r: int | None) -> Path:
        if r not in made:
            made[r] = export(ref[1], folder / f"r{r}.onnx", r)
        return made[r]

    return get


# --- the tests ----------------------------------------------------------------------------

@pytest.mark.parametrize("r", [4, 12])
def test_merged_onnx_equals_tome_on_a_timm_vit_and_merges_by_input(r, ref, exported):
    model, _ = ref
    onnx_path = exported(r)
    x = photos()
    got = ort.InferenceSession(str(onnx_path)).run(None, {"images": x})[0]
    merges: list[tuple[torch.Tensor, ...]] = []
    with torch.no_grad():
        expected = model(torch.from_numpy(x), r, merges).numpy()
        unmerged = model(torch.from_numpy(x)).numpy()
    assert relative_error(expected, got) < TOL
    assert relative_error(unmerged, got) > 100 * TOL  # merging changed the answer

    # input dependence: the photos merge different tokens, and the first photo's merges
    # made on the second (what a pattern fixed at export computes) are not its answer
    merged_away = [[set(src[i, :, 0].tolist()) for i in range(len(x))] for _, src, _ in merges]
    assert any(sets[0] != sets[1] for sets in merged_away)
    assert any(sets[1] != sets[2] for sets in merged_away)
    first = [tuple(t[:1] for t in indices) for indices in merges]
    with torch.no_grad():
        frozen = model(torch.from_numpy(x[1:2]), r, replay=first).numpy()
    assert relative_error(frozen, got[1:2]) > 100 * TOL


def test_r_zero_is_the_unmerged_model(ref, exported):
    model, _ = ref
    plain = onnx.load(str(exported(None)))
    zero = onnx.load(str(exported(0)))
    assert [n.op_type for n in zero.graph.node] == [n.op_type for n in plain.graph.node]
    x = photos()
    got = ort.InferenceSession(zero.SerializeToString()).run(None, {"images": x})[0]
    with torch.no_grad():
        assert relative_error(model(torch.from_numpy(x)).numpy(), got) < TOL


def test_openvino_runs_the_merged_graph(ref, exported):
    ov = pytest.importorskip("openvino")
    model, _ = ref
    onnx_path = exported(8)
    core = ov.Core()
    compiled = core.compile_model(core.read_model(str(onnx_path)), "CPU",
                                  {"INFERENCE_PRECISION_HINT": "f32"})
    x = photos()
    with torch.no_grad():
        expected = model(torch.from_numpy(x), 8).numpy()
    got = np.concatenate([compiled(x[i:i + 1])[0] for i in range(len(x))])
    assert relative_error(expected, got) < TOL


def test_tensorrt_parser_accepts_the_merged_graph(exported):
    pytest.importorskip("tensorrt_rtx")
    from vitedge.backends.tensorrt_rtx.parser import parser_problems

    model = onnx.load(str(exported(8)))
    assert {"TopK", "GatherElements", "Equal", "Log"} <= {n.op_type for n in model.graph.node}
    assert not {"ScatterElements", "ScatterND", "NonZero"} & {n.op_type for n in model.graph.node}
    assert parser_problems(model) == []


def test_tensorrt_for_rtx_builds_an_engine_of_the_merged_graph(exported, tmp_path):
    """TensorRT for RTX's real builder (ahead of time, no GPU needed) takes the merging ops."""
    pytest.importorskip("tensorrt_rtx")
    from vitedge.deploy import BuildOptions, build

    merged = exported(8)
    engine = tmp_path / "merged.engine"
    result = build(merged, engine, BuildOptions(precision="fp32", backend="tensorrt-rtx",
                                                profile="rtx-portable"))
    assert result.backend == "tensorrt-rtx" and engine.stat().st_size > 100_000


def test_the_manifest_records_the_schedule_and_inspect_shows_tokens(exported, capsys):
    onnx_path = exported(12)
    from vitedge.manifest import manifest_from_file

    cfg = manifest_from_file(onnx_path).architecture
    # 65 tokens: 12, 12, 12, then 8 left to merge at most ((29 - 1) // 2 = 14, so 12)
    assert cfg.merge == (12, 12, 12, 12)
    assert cfg.tokens_per_block() == [65, 53, 41, 29, 17]
    code, out, _ = run_cli(["inspect", str(onnx_path)], capsys)
    assert code == 0 and "65 53 41 29 17" in out


@pytest.mark.parametrize("args, expected", [
    (["--merge", "x"], "use a token count"),
    (["--merge", "1,2"], "one count per block: 4, not 2"),
    (["--merge", "40,0,0,0"], "block 0 can merge 0..32 of its 65 tokens, not 40"),
])
def test_bad_schedules_are_refused_in_one_line(args, expected, ref, tmp_path, capsys):
    _, checkpoint = ref
    code, out, err = run_cli(["export", str(checkpoint), "-o", str(tmp_path / "m.onnx"),
                              "--num-heads", str(HEADS), *args], capsys)
    assert code != 0 and expected in err and "Traceback" not in err


def test_rotary_models_refuse_merging_in_one_line(tmp_path, capsys):
    code, _, err = run_cli(["export", str(FIXTURES / "eva02_small"), "-o",
                            str(tmp_path / "m.onnx"), "--merge", "4"], capsys)
    assert code != 0 and "rotary position embedding" in err and len(err.strip().splitlines()) <= 2


# --- the families ---------------------------------------------------------------------------

@pytest.mark.parametrize("family", ["dinov2", "dinov2_reg4", "clip", "siglip", "vit_reg4_gap",
                                    "deit3_ls"])
def test_each_family_exports_merged_and_its_embedding_stays_close(family, tmp_path):
    """Class token, registers, GAP, attention pooling, layer scale: the merged export passes
    its verification against PyTorch (inside export_onnx), every block keeps its static
    token count, and the runtime's output stays close to the unmerged model's."""
    import vitedge

    outputs = []
    for merge in (None, 4):
        path = tmp_path / f"{family}.{merge}.onnx"
        result = export_onnx(FIXTURES / family, path, ExportOptions(merge=merge))
        assert max(c.relative for c in result.comparisons) < TOL
        with vitedge.open(path, keep_logits=True) as pipe:
            outputs.append(np.stack([p.logits if p.logits is not None else p.embedding
                                     for p in pipe.batch(PHOTOS)]))
    cfg = result.manifest.architecture
    t = cfg.num_tokens
    assert cfg.tokens_per_block() == [t, t - 4, t - 8]
    a, b = outputs
    cosine = np.sum(a * b, -1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)
    assert cosine.min() > 0.95, cosine
    # the export reports what merging costs: its worst cosine with the unmerged model on the
    # photos is the one measured here from the two runtimes' outputs
    reported = {c.case: c for c in result.vs_unmerged}
    assert set(reported) == {"random", "photos"}
    assert reported["photos"].cosine == pytest.approx(cosine.min(), abs=1e-4)


# --- the schedule chosen within a budget ------------------------------------------------------

def test_merge_auto_stays_within_the_budget_on_its_images(demo_fp32, tmp_path, capsys):
    """On images in class folders the budget is the top-1 change against their labels, less
    two standard errors. The chooser's records are what ONNX Runtime measures for those
    schedules on the same images; the greedy search judged per-block schedules beside ToMe's
    constant ones; what it chose is within --max-drop, was timed faster than the unmerged
    model here and has the fewest FLOPs of those its rounds cannot tell from the fastest, or
    nothing within the budget was faster and nothing merges."""
    import re

    from tests.conftest import DEMO_CALIBRATION, DEMO_CHECKPOINT
    from vitedge.datasets import image_source, model_inputs
    from vitedge.manifest import manifest_from_file

    out = tmp_path / "auto.onnx"
    code, _, err = run_cli(["export", str(DEMO_CHECKPOINT), "-o", str(out), "--merge", "auto",
                            "--max-drop", "2", "--merge-data", str(DEMO_CALIBRATION),
                            "--merge-images", "200", "--json"], capsys)
    assert code == 0, err
    manifest = manifest_from_file(out)
    choice = manifest.source["merge_auto"]
    assert choice["measure"] == "top-1 change against the labels, points"
    assert tuple(choice["schedule"]) == manifest.architecture.merge
    unmerged, *judged = choice["candidates"]
    timed = [c for c in judged if c["ms"] is not None]
    assert timed and all(c["within"] for c in timed)
    if choice["schedule"]:
        # the fewest FLOPs of those faster than unmerged that the timings cannot tell from
        # the fastest: slower in at most half the rounds plus two standard deviations of a
        # fair coin's count (sqrt(n) / 2 each), or a median within tie_percent of its
        chosen = next(c for c in judged if c["schedule"] == choice["schedule"])
        fastest = min(timed, key=lambda c: c["ms"])
        rounds = choice["rounds"]
        assert choice["tie_percent"] == 2.0
        tied = [c for c in timed if c["ms"] < unmerged["ms"]
                and (c["slower"] <= rounds / 2 + math.sqrt(rounds)
                     or c["ms"] <= fastest["ms"] * 1.02)]
        assert fastest["slower"] == 0 and fastest in tied and rounds >= 20
        assert chosen in tied and chosen["gflops"] == min(c["gflops"] for c in tied)
    else:
        assert all(c["ms"] >= unmerged["ms"] for c in timed)
    searched = [c for c in judged if c["r"] is None]
    assert searched and any(len(set(c["schedule"])) > 1 for c in searched)
    code, shown, err = run_cli(["inspect", str(out)], capsys)
    assert code == 0 and "merge choice" in shown and "on 200 images" in shown, err
    assert f"{sum(c['within'] for c in judged)} of {len(judged)} schedules within" in \
        " ".join(shown.replace("│", " ").split())

    # the same images, their labels from the folder names, run by ONNX Runtime
    source = image_source(DEMO_CALIBRATION, 200, seed=1)
    x = np.stack(list(model_inputs(source, manifest)))
    names = [re.sub(r"[^a-z]", "", label.lower()) for label in manifest.labels]
    labels = np.array([names.index(re.sub(r"[^a-z]", "", Path(f).parent.name)) for f in
                       source.items])
    plain = demo_fp32  # the session's unmerged export
    a = ort.InferenceSession(str(plain)).run(None, {"images": x})[0].argmax(-1)
    for i, c in enumerate((searched[-1], judged[0])):
        merged = tmp_path / f"merged{i}.onnx"
        export_onnx(DEMO_CHECKPOINT, merged, ExportOptions(merge=tuple(c["schedule"])))
        b = ort.InferenceSession(str(merged)).run(None, {"images": x})[0].argmax(-1)
        gained = (b == labels).astype(float) - (a == labels)
        change = 100 * gained.mean()
        error = 100 * gained.std(ddof=1) / math.sqrt(len(gained))
        assert c["score"] == pytest.approx(change, abs=0.01)
        assert c["error"] == pytest.approx(error, abs=0.01)
        assert c["agreement"] == pytest.approx(100 * np.mean(a == b), abs=0.01)
        assert c["within"] == (change - 2 * error >= -2)


@pytest.mark.parametrize("one_fastest, lead", [(False, 0.0), (True, 0.5), (True, 0.01)],
                         ids=["tied", "twice as fast", "1.5 % faster"])
def test_merge_auto_breaks_ties_in_time_by_flops(one_fastest, lead, tmp_path):
    """Schedules whose paired rounds cannot tell them apart go to the one with the fewest
    FLOPs; a schedule twice as fast in every round wins, though it has the most; one 1.5 %
    faster in every round (the sign test tells it apart) is within TIE_PERCENT of the rest,
    which tie with it: the fewest FLOPs again. The rounds are this test's own, given through
    `merge_timer`; the graphs timed have the export's batch (a fixed 4, or the dynamic one,
    timed at 1)."""
    from tests.conftest import DEMO_CALIBRATION, DEMO_CHECKPOINT
    from vitedge.export.merge_choice import ScheduleTimer
    from vitedge.manifest import manifest_from_onnx

    batches = set()

    def latencies(graphs):
        batches.update(g.graph.input[0].type.tensor_type.shape.dim[0].dim_value for g in graphs)
        flops = [manifest_from_onnx(g).architecture.macs() for g in graphs]
        rounds = [[2.0] * 40]  # the unmerged model, slower than every schedule
        for i, f in enumerate(flops[1:]):
            if one_fastest and f == max(flops[1:]):
                # faster than the others in every round: by half, or by 1.5 % of their
                # median (within TIE_PERCENT, which the sign test alone would not tie)
                rounds.append([1.0 - lead - 0.005] * 40)
            else:  # alternately a little faster and a little slower than the others
                rounds.append([1.0 + 0.01 * (-1) ** (k + i) for k in range(40)])
        return rounds

    out = tmp_path / "auto.onnx"
    result = export_onnx(DEMO_CHECKPOINT, out, ExportOptions(
        merge="auto", max_drop=2.0, merge_data=str(DEMO_CALIBRATION), merge_images=100,
        batch=4 if one_fastest else None, verify=False),
        merge_timer=ScheduleTimer("given rounds", latencies))
    choice = result.manifest.source["merge_auto"]
    assert batches == ({4} if one_fastest else {0})  # 0: a dynamic dimension
    assert choice["timed_on"] == f"given rounds, batch {4 if one_fastest else 1}"
    timed = [c for c in choice["candidates"][1:] if c["ms"] is not None]
    assert len(timed) >= 2 and choice["rounds"] == 40
    pick = max if lead > 0.02 else min
    expected = pick(timed, key=lambda c: c["gflops"])
    assert choice["schedule"] == expected["schedule"] == list(result.manifest.architecture.merge)


def test_merge_auto_needs_images(tmp_path, capsys):
    from tests.conftest import DEMO_CHECKPOINT

    code, _, err = run_cli(["export", str(DEMO_CHECKPOINT), "-o", str(tmp_path / "m.onnx"),
                            "--merge", "auto"], capsys)
    assert code != 0 and "--merge-data" in err and "Traceback" not in err


@pytest.mark.parametrize("built", [False, True], ids=["exported", "onnxruntime-build"])
def test_explain_maps_a_merged_models_attention_back_to_the_patch_grid(built, ref, exported,
                                                                      tmp_path, capsys):
    """The class token's last-block attention, each merged token's share spread over the
    patches it holds, as ToMe's source tracking (`merge_source`: the identity merged along
    with the tokens) gives it on the reference; also read from ONNX Runtime's build, where
    proportional attention is MultiHeadAttention's attention bias."""
    from vitedge.backends import load_runner
    from vitedge.runtime.attention import attention_grid

    model, _ = ref
    onnx_path = exported(8)
    x = photos()
    if built:
        from vitedge.deploy import BuildOptions, build
        from vitedge.options import VerifyOptions

        onnx_path = build_path = tmp_path / "merged.cpu.onnx"
        build(exported(8), build_path,
              BuildOptions(precision="fp32", profile="cpu", verify=VerifyOptions(enabled=False)))
        fused = [n for n in onnx.load(str(build_path)).graph.node if n.op_type == "MultiHeadAttention"]
        # every block fused; all but the first (sizes of one) with the log sizes as bias
        assert len(fused) == DEPTH and sum(len(n.input) > 5 and bool(n.input[5]) for n in fused) == DEPTH - 1
        with load_runner(build_path) as runner, torch.no_grad():
            got_logits = np.concatenate([runner.infer(x[i:i + 1]) for i in range(len(x))])
            assert relative_error(model(torch.from_numpy(x), 8).numpy(), got_logits) < TOL
    merges: list[tuple[torch.Tensor, ...]] = []
    with torch.no_grad():
        model(torch.from_numpy(x), 8, merges)
        tokens = 1 + (SIZE // PATCH) ** 2
        source = torch.eye(tokens).expand(len(x), tokens, tokens)
        for indices in merges[:-1]:  # what each token before the last block holds
            source = merge(indices, source)
        last = model.blocks[-1].probs.mean(1)[:, 0]  # (B, T_last): the class token's row
        per_patch = (last[..., None] * source / source.sum(-1, keepdim=True)).sum(1)
    expected = per_patch[:, 1:].reshape(len(x), SIZE // PATCH, SIZE // PATCH).numpy()
    with load_runner(onnx_path) as runner:
        _, probs = runner.attention(x)
        got = attention_grid(probs, runner.manifest.architecture, "cls")
    assert relative_error(expected, got) < TOL
    assert all(p.shape[-1] == tokens for p in probs)
    if built:
        return
    code, out, err = run_cli(["explain", str(onnx_path), str(PHOTOS[0]), "-o",
                              str(tmp_path / "maps"), "--method", "rollout"], capsys)
    assert code == 0, err
    assert np.load(next((tmp_path / "maps").glob("*.npy"))).shape == (SIZE // PATCH,) * 2


def test_explain_refuses_merged_attention_it_cannot_place(ref, tmp_path, capsys):
    _, checkpoint = ref
    model = tmp_path / "merged.onnx"
    export_onnx(checkpoint, model, ExportOptions(num_heads=HEADS, merge=8, attention_outputs=True))
    from vitedge.backends.base import Runner

    with pytest.MonkeyPatch.context() as patch:  # a backend that reads only attn.N outputs
        from vitedge.backends.onnxruntime.runner import OnnxRuntimeRunner

        patch.setattr(OnnxRuntimeRunner, "attention", Runner.attention)
        code, _, err = run_cli(["explain", str(model), str(PHOTOS[0]), "-o",
                                str(tmp_path / "maps")], capsys)
    assert code != 0 and "merges tokens" in err and "Traceback" not in err


def test_bench_shows_tokens_and_gflops_next_to_latency(exported, capsys):
    import json

    merged = exported(8)
    plain = exported(None)
    code, out, err = run_cli(["bench", str(merged), str(plain), "--iterations", "3", "--json"],
                             capsys)
    assert code == 0, err
    merged_row, plain_row = json.loads(out)["results"]
    assert merged_row["tokens"] == [65, 57, 49, 41, 33]
    assert plain_row["tokens"] == [65] * 5
    assert 0 < merged_row["gflops"] < plain_row["gflops"]
    code, out, _ = run_cli(["bench", str(merged), "--iterations", "3"], capsys)
    assert code == 0 and "tokens 65>57>49>41>33" in out


def test_a_merged_model_quantizes_to_int8_and_fp16(tmp_path):
    """Calibration and quantization run on the merged graph; the one-hot and matching
    MatMuls stay in float (only the Linears and the patch embedding get Q/DQ)."""
    from tests.conftest import DEMO_CALIBRATION, DEMO_CHECKPOINT, DEMO_TEST_IMAGES
    from vitedge.datasets import image_source, model_inputs
    from vitedge.manifest import manifest_from_file
    from vitedge.options import CalibrationOptions, QuantizeRequest
    from vitedge.quantize.quantizer import quantize_model

    fp32 = tmp_path / "merged.onnx"
    export_onnx(DEMO_CHECKPOINT, fp32, ExportOptions(merge=2))
    manifest = manifest_from_file(fp32)
    x = np.stack(list(model_inputs(image_source(DEMO_TEST_IMAGES, 200), manifest)))
    reference = ort.InferenceSession(str(fp32)).run(None, {"images": x})[0]
    for precision, least in (("int8", 0.95), ("fp16", 0.99)):
        out = tmp_path / f"merged.{precision}.onnx"
        quantize_model(fp32, out, QuantizeRequest(precision, data=str(DEMO_CALIBRATION),
                                                  calibration=CalibrationOptions(num_images=64)))
        model = onnx.load(str(out))
        if precision == "int8":
            quantized = {n.input[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
            assert not any(".merge." in name for name in quantized)
        got = ort.InferenceSession(str(out)).run(None, {"images": x})[0]
        assert np.mean(reference.argmax(-1) == got.argmax(-1)) >= least, precision


@pytest.mark.parametrize("scheme", ["vit", "all"])
def test_a_batch_1_merged_export_quantizes_to_int8(scheme, tmp_path):
    """With every shape static, the merge's row indices are one constant row (a range of
    0); integer tensors (indices, shapes) are never calibrated or given Q/DQ, whatever the
    scheme, so the INT8 graph runs and still classifies like its FP32 graph in ONNX Runtime."""
    from tests.conftest import DEMO_CALIBRATION, DEMO_CHECKPOINT
    from vitedge.options import CalibrationOptions, QuantizeOptions, QuantizeRequest
    from vitedge.quantize import quantize_model
    from vitedge.quantize.qdq import calibration_tensors

    fp32, q = tmp_path / "m.onnx", tmp_path / "m.int8.onnx"
    export_onnx(DEMO_CHECKPOINT, fp32, ExportOptions(merge=4, batch=1))
    graph = onnx.shape_inference.infer_shapes(onnx.load(str(fp32)))
    integers = {v.name for v in graph.graph.value_info
                if v.type.tensor_type.elem_type == onnx.TensorProto.INT64}
    assert integers and not integers & set(calibration_tensors(onnx.load(str(fp32))))
    quantize_model(fp32, q, QuantizeRequest("int8", data=str(DEMO_CALIBRATION),
                                            calibration=CalibrationOptions(num_images=32),
                                            qdq=QuantizeOptions(scheme=scheme)))
    x = np.stack([np.asarray(Image.open(p).resize((28, 28)), np.float32)[None] / 255.0
                  for p in sorted(DEMO_CALIBRATION.rglob("*.png"))[:16]])
    a = np.concatenate([ort.InferenceSession(str(fp32)).run(None, {"images": x[i:i + 1]})[0]
                        for i in range(len(x))])
    b = np.concatenate([ort.InferenceSession(str(q)).run(None, {"images": x[i:i + 1]})[0]
                        for i in range(len(x))])
    assert np.mean(a.argmax(-1) == b.argmax(-1)) >= 0.8
