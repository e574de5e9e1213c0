"""Issue 16's training step on the CPU: frozen parts really frozen (eval mode, no autograd, constant
features), the chunked labelled-only loss equal to the reference in loss and gradients for both decoder
families (fp32 and bf16 autocast), the shared train_step with compiled blocks and bucketed batches equal to
eager, the per-part FLOPs, and the throughput benchmark's smoke run printing both variants."""
from __future__ import annotations

import contextlib
import io
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from model.configuration import PARTS  # noqa: E402
from model.flops import ORDER, training_flops  # noqa: E402
from model.losses import (IGNORE_INDEX, chunk_losses, compiled_chunk_losses, linear_cross_entropy,  # noqa: E402
                          linear_cross_entropy_sum, reference_token_losses)
from model.modeling import FlorenzModel  # noqa: E402
from model.optim import optimizer_for  # noqa: E402
from model.sizes import florenz_config  # noqa: E402
from model.step import bucket, bucketed, compile_regions, to_device, train_step  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import train_profile  # noqa: E402
import train_throughput  # noqa: E402

ENCODER_VOCAB, DECODER_VOCAB = 200, 300


def tiny_model(size: str = "tiny", parts=None) -> FlorenzModel:
    torch.manual_seed(0)
    model = FlorenzModel(florenz_config(size, DECODER_VOCAB, ENCODER_VOCAB))
    model.set_trainable(parts)
    return model.train()


def batch(size: int = 3, image: int = 64) -> dict:
    """A collated CPU batch with one row whose labels are all ignored and one partly ignored."""
    out = train_throughput.synthetic_batch(size, image, 5, 7, ENCODER_VOCAB, DECODER_VOCAB)
    out["labels"][1] = IGNORE_INDEX
    out["labels"][2, 4:] = IGNORE_INDEX
    out["decoder_attention_mask"][2, 5:] = 0
    return out


def no_autocast():
    return torch.autocast("cpu", enabled=False)


# -- 1. really frozen -----------------------------------------------------------------------------------
def test_a_frozen_davit_gives_the_same_features_every_training_step_and_the_encoder_still_learns():
    model = tiny_model()
    assert model.config.florence.vision_config.drop_path_rate > 0
    pixels = batch()["pixel_values"]
    first, second = model.image_features(pixels), model.image_features(pixels)
    assert model.training and model.encoder.training
    assert not model.vision_tower.training and not model.projector.training
    assert not first.requires_grad
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    model(**batch()).backward()
    assert all(p.grad is None for p in [*model.vision_tower.parameters(), *model.projector.parameters()])
    assert all(p.grad is not None for p in model.encoder.layers.parameters())


def test_a_trained_vision_tower_keeps_drop_path_and_gets_gradients_and_the_rule_follows_requires_grad():
    model = tiny_model(parts=PARTS)
    pixels = batch()["pixel_values"]
    assert model.vision_tower.training
    assert not torch.equal(model.image_features(pixels), model.image_features(pixels))  # drop_path active
    model(**batch()).backward()
    assert all(p.grad is not None for p in model.vision_tower.parameters() if p.requires_grad)
    model.set_trainable()  # the paper's freezing again: the tower goes back to eval
    assert not model.vision_tower.training
    for p in model.vision_tower.parameters():  # flags changed behind set_trainable's back: followed at call time
        p.requires_grad_(True)
    model.image_features(pixels)
    assert model.vision_tower.training
    model.eval()
    assert not model.vision_tower.training and not model.encoder.training


def test_the_patch_stem_tower_is_frozen_the_same_way():
    model = tiny_model("toy-s")
    features = model.image_features(batch()["pixel_values"])
    assert not model.vision_tower.training and not features.requires_grad


# -- 2. loss on labelled tokens only --------------------------------------------------------------------
@pytest.mark.parametrize("chunk", [2, 1024])
@pytest.mark.parametrize("softcap", [None, 3.0])
def test_the_chunked_linear_cross_entropy_has_exact_gradients(chunk, softcap):
    """Per row (gradients recomputed in backward) and summed (gradients computed in forward)."""
    torch.manual_seed(0)
    hidden = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(11, 4, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 11, (5,))
    assert torch.autograd.gradcheck(lambda h, w: linear_cross_entropy(h, w, targets, softcap, chunk), (hidden, weight))
    assert torch.autograd.gradcheck(lambda h, w: linear_cross_entropy_sum(h, w, targets, softcap, chunk),
                                    (hidden, weight))
    logits = hidden @ weight.t()
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    expected = torch.nn.functional.cross_entropy(logits, targets, reduction="none")
    torch.testing.assert_close(linear_cross_entropy(hidden, weight, targets, softcap, chunk), expected)
    torch.testing.assert_close(linear_cross_entropy_sum(hidden, weight, targets, softcap, chunk), expected.sum())


@pytest.mark.parametrize("softcap", [None, 3.0])
def test_the_compiled_loss_equals_the_eager_one(softcap):
    """inductor, as run.compile uses it on a GPU: the same losses and gradients at two chunk sizes (the
    second one a dynamic-shape graph), in fp32 and from bf16 head outputs."""
    torch.manual_seed(0)
    for dtype in (torch.float32, torch.bfloat16):
        for rows in (7, 5):
            logits = (torch.randn(rows, 300) * 4).to(dtype)
            targets = torch.randint(0, 300, (rows, 1))
            scale = torch.rand(rows)
            eager = chunk_losses(logits.clone(), targets, softcap, scale, True)
            compiled = compiled_chunk_losses("inductor")(logits.clone(), targets, softcap, scale, True)
            tolerance = {"rtol": 1e-5, "atol": 1e-6} if dtype == torch.float32 else {"rtol": 1e-2, "atol": 1e-3}
            for got, want in zip(compiled, eager):
                assert got.dtype == want.dtype
                torch.testing.assert_close(got, want, **tolerance)
            assert eager[1].dtype == dtype and eager[0].dtype == torch.float32


@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16-autocast"])
@pytest.mark.parametrize("size", ["tiny", "tiny-gemma"])
def test_losses_and_gradients_equal_the_reference(size, bf16):
    model = tiny_model(size).eval()  # no dropout: both runs see the same network
    if size == "tiny-gemma":
        assert model.logit_softcap is not None
    inputs = batch()
    trained = [p for p in model.parameters() if p.requires_grad]

    def run(loss_fn) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """(per-sample losses, token counts, gradients of the mean loss) under the test's precision."""
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            losses, tokens = loss_fn()
        (losses.sum() / tokens.sum() if losses.dim() else losses).backward()
        grads = [p.grad.clone() for p in trained]
        model.zero_grad(set_to_none=True)
        return losses.detach(), tokens, grads

    ref_losses, ref_tokens, ref_grads = run(lambda: reference_token_losses(model, **inputs))
    per_sample, tokens, per_sample_grads = run(lambda: model.token_losses(**inputs))  # evaluation's
    mean, _, mean_grads = run(lambda: (model(**inputs), tokens))  # training's: gradients in forward
    assert tokens.tolist() == ref_tokens.tolist() == [7, 0, 4]
    assert per_sample[1] == 0
    tolerance = 2e-2 if bf16 else 1e-5
    torch.testing.assert_close(per_sample, ref_losses, rtol=tolerance, atol=tolerance)
    torch.testing.assert_close(mean, ref_losses.sum() / ref_tokens.sum(), rtol=tolerance, atol=tolerance)
    for grads in (per_sample_grads, mean_grads):
        for grad, ref in zip(grads, ref_grads):
            # relative to the parameter's largest gradient; a floor for those zero up to rounding (k biases)
            torch.testing.assert_close(grad, ref, rtol=tolerance, atol=tolerance * max(float(ref.abs().max()), 1e-3))


def test_decode_still_gives_the_soft_capped_logits_generation_uses():
    model = tiny_model("tiny-gemma").eval()
    inputs = batch()
    with torch.no_grad():
        states, mask = model.encode(inputs["pixel_values"], inputs["input_ids"], inputs["attention_mask"])
        logits, _ = model.decode(inputs["decoder_input_ids"], states, mask, inputs["decoder_attention_mask"])
        reference = model.decoder(input_ids=inputs["decoder_input_ids"],
                                  attention_mask=inputs["decoder_attention_mask"],
                                  encoder_hidden_states=states, encoder_attention_mask=mask).logits
    torch.testing.assert_close(logits, reference)
    assert logits.abs().max() <= model.logit_softcap


# -- 3. one train_step, compiled blocks, bucketed lengths -----------------------------------------------
def run_steps(model: FlorenzModel, batches: list[dict], accumulation: int = 1) -> list[float]:
    optimizer = optimizer_for(model, 1e-3, 0.0, (0.9, 0.999), torch.device("cpu"))
    inputs = iter([to_device(b, torch.device("cpu")) for b in batches])
    losses = []
    for _ in range(len(batches) // accumulation):
        result = train_step(model, model, optimizer, None, inputs, accumulation, 1.0, no_autocast)
        assert not result.loss.requires_grad and result.loss.dim() == 0
        losses.append(float(result.loss))
    assert all(p.grad is None for p in model.parameters())  # zero_grad(set_to_none=True)
    return losses


@pytest.mark.parametrize("size", ["tiny", "tiny-gemma"])
def test_compiled_regions_on_bucketed_batches_give_the_eager_losses(size):
    """aot_eager: dynamo and AOTAutograd trace the blocks, the tower and the loss as under inductor,
    without inductor's C++ compilation (about 40 s for the tiny model on this CPU)."""
    batches = [batch(), batch()]
    padded = [bucketed(b, 0, 0) for b in batches]
    assert padded[0]["input_ids"].shape[1] == bucket(5) == 8 and padded[0]["labels"].shape[1] == 8
    eager = run_steps(tiny_model(size).eval(), batches)
    model = tiny_model(size).eval()
    compile_regions(model, backend="aot_eager")
    assert model.loss_backend == "aot_eager"
    compiled = run_steps(model, padded)
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-5)
    assert eager[1] < eager[0]


def test_accumulated_micro_steps_give_the_mean_of_their_losses():
    one, two = batch(), batch()
    two["labels"][0, :3] = IGNORE_INDEX
    with torch.no_grad():
        separate = [float(tiny_model().eval()(**to_device(b, torch.device("cpu")))) for b in (one, two)]
    accumulated = run_steps(tiny_model().eval(), [one, two], accumulation=2)
    assert accumulated == pytest.approx([sum(separate) / 2], rel=1e-5)


def test_bart_attention_runs_through_sdpa():
    model = tiny_model()
    assert model.encoder.config._attn_implementation == "sdpa"
    assert model.decoder.config._attn_implementation == "sdpa"


# -- 5. FLOPs per part ----------------------------------------------------------------------------------
def test_flops_per_part_count_the_frozen_tower_forward_only_and_the_head_on_labelled_tokens():
    model = tiny_model()
    flops = training_flops(model, 64, 5, 7, labelled_tokens=4)
    assert list(flops) == list(ORDER)
    assert flops["vision_tower"].forward > 0 and flops["vision_tower"].backward == 0
    assert flops["lm_head"].forward == 2 * DECODER_VOCAB * model.config.encoder_dim * 4
    assert flops["encoder"].backward == pytest.approx(2 * flops["encoder"].forward)  # input + weight gradients
    trained = training_flops(tiny_model(parts=PARTS), 64, 5, 7, labelled_tokens=4)
    assert trained["vision_tower"].backward == pytest.approx(2 * trained["vision_tower"].forward)


# -- the benchmark ----------------------------------------------------------------------------------------
def test_the_benchmark_smoke_run_prints_both_variants():
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert train_throughput.main(["--device", "cpu", "--sizes", "tiny", "--batch-sizes", "2", "--steps", "2",
                                      "--warmup", "1"]) == 0
    rows = [line.split() for line in out.getvalue().splitlines() if line.startswith("tiny ")]
    assert [r[2] for r in rows] == ["before", "after"], out.getvalue()
    assert float(rows[0][3]) > 0 and float(rows[1][3]) > 0 and rows[1][-1].endswith("x")
    assert "vision_tower" in out.getvalue()


def test_the_profile_benchmark_smoke_run_prints_the_loss_chunk_and_each_variant():
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert train_profile.main(["--device", "cpu", "--sizes", "tiny:2", "--steps", "1", "--warmup", "1",
                                   "--variants", "eager,loss_compiled", "--loss-vocab", "512"]) == 0
    lines = out.getvalue().splitlines()
    assert sum(line.startswith("loss chunk 1024x512") for line in lines) == 4, out.getvalue()
    rows = [line.split() for line in lines if line.startswith("tiny ")]
    assert [r[2] for r in rows] == ["eager", "loss_compiled"] and all(float(r[3]) > 0 for r in rows)
