"""CkaadModel: modes, discriminator isolation, export, backbone-derived layout, errors."""

from __future__ import annotations

import pytest
import torch
from anomalib.data import InferenceBatch

from ckaad_anomalib.models.ckaad.anomaly_map import image_score
from ckaad_anomalib.models.ckaad.torch_model import CkaadModel, TrainOutput

RESNET18 = {"backbone": "resnet18", "layers": ["layer2", "layer3"], "pre_trained": False}


@pytest.fixture
def model(seeded: None) -> CkaadModel:
    return CkaadModel(**RESNET18, input_size=(64, 64), discriminator="both")


def test_train_mode_returns_features_and_reconstructions(model: CkaadModel) -> None:
    model.train()
    out = model(torch.randn(2, 3, 64, 64))
    assert isinstance(out, TrainOutput)
    assert [tuple(f.shape) for f in out.features] == [(2, 128, 8, 8), (2, 256, 4, 4)]
    assert [r.shape for r in out.reconstructions] == [f.shape for f in out.features]


def test_eval_returns_inference_batch_without_touching_discriminator(model: CkaadModel) -> None:
    calls: list[str] = []
    for d in model.discriminator_modules:
        d.register_forward_hook(lambda *_: calls.append("D"))
    model.eval()
    out = model(torch.randn(3, 3, 64, 64))
    assert isinstance(out, InferenceBatch)
    assert out.pred_score.shape == (3,)
    assert out.anomaly_map.shape == (3, 1, 64, 64)
    assert calls == []


def test_extractor_frozen_and_in_eval_mode(model: CkaadModel) -> None:
    model.train()
    model(torch.randn(2, 3, 64, 64))
    assert not any(p.requires_grad for p in model.extractor.parameters())
    assert not model.extractor.feature_extractor.training  # BN statistics stay fixed


def test_layout_read_from_backbone() -> None:
    lite = CkaadModel("tf_efficientnet_lite0", ["blocks.2", "blocks.4"], (64, 64), pre_trained=False)
    assert list(lite.extractor.out_dims) == [40, 112]
    assert lite.patch_discriminator is not None
    assert [h.net[0].in_channels for h in lite.patch_discriminator.heads] == [40, 112]
    recon = CkaadModel(**RESNET18, input_size=(64, 64), discriminator=None)
    assert recon.discriminator_modules == []


def test_inference_path_exports_with_torch_export(model: CkaadModel) -> None:
    model.eval()
    x = torch.randn(2, 3, 64, 64)
    program = torch.export.export(model, (x,))
    exported = program.module()(x)
    eager = model(x)
    torch.testing.assert_close(exported.anomaly_map, eager.anomaly_map)
    torch.testing.assert_close(exported.pred_score, eager.pred_score)
    # torch.export keeps every parameter of the module as an input; D's inputs must feed no operation
    to_param = program.graph_signature.inputs_to_parameters
    used = {to_param[n.name] for n in program.graph.nodes if n.op == "placeholder" and n.name in to_param and n.users}
    assert any(name.startswith("autoencoder.") for name in used)
    assert not any("discriminator" in name for name in used)


def test_unknown_layer_names_stages() -> None:
    with pytest.raises(ValueError, match=r"layer9.*stages are \['act1', 'layer1', 'layer2', 'layer3', 'layer4'\]"):
        CkaadModel("resnet18", ["layer2", "layer9"], (64, 64), pre_trained=False)


def test_input_size_must_fit_the_latent() -> None:
    with pytest.raises(ValueError, match="multiple of 32 and at least 64"):
        CkaadModel(**RESNET18, input_size=(48, 48))
    with pytest.raises(ValueError, match="top_k"):
        CkaadModel(**RESNET18, input_size=(64, 64), top_k=0)
    with pytest.raises(ValueError, match="'pixel' is not a valid DiscriminatorType"):
        CkaadModel(**RESNET18, input_size=(64, 64), discriminator="pixel")


def test_missing_pretrained_weights_say_how_to_provide_them_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # resnet18's weights are not cached here
    with pytest.raises(RuntimeError, match="Pretrained weights for backbone 'resnet18' could not be loaded") as info:
        CkaadModel("resnet18", ["layer2", "layer3"], (64, 64), pre_trained=True)
    assert "HF_HUB_OFFLINE=1" in str(info.value)
    assert "ckaad-weights" in str(info.value)


def test_no_weights_and_no_hub_fails_fast_with_the_message_first(monkeypatch: pytest.MonkeyPatch) -> None:
    """Before: five download retries with back-off and 308 lines, the helpful message at the very bottom."""
    from huggingface_hub import constants

    from ckaad_anomalib import weights

    assert weights.weights_are_cached("resnet18") is False  # nothing downloads here
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # discard port: refused at once
    assert weights.hub_reachable() is False
    with pytest.raises(RuntimeError, match=r"'resnet18' could not be loaded \(not in the local cache") as info:
        CkaadModel("resnet18", ["layer2", "layer3"], (64, 64), pre_trained=True)
    assert info.value.__cause__ is None  # no chained download traceback
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert weights.hub_reachable() is False


def test_energy_score_fuses_the_standardised_patch_discriminator_and_keeps_it_in_the_export(seeded: None) -> None:
    model = CkaadModel(**RESNET18, input_size=(64, 64), energy_weight=2.0)
    assert {"score_mean", "score_std", "score_weights"} <= set(model.state_dict())  # saved and exported
    model.set_score_statistics(torch.tensor([0.3, 1.5]), torch.tensor([0.1, 0.0]))
    assert float(model.score_std[1]) == pytest.approx(1e-6)  # a zero spread cannot divide by zero
    model.set_score_statistics(torch.tensor([0.3, 1.5]), torch.tensor([0.1, 2.0]))
    assert model.score_weights.tolist() == [1.0, 2.0]
    model.eval()
    x = torch.randn(2, 3, 64, 64)
    out = model(x)
    features = model.extract(x)
    distance, energy = model.component_maps(features, model.autoencoder(features), (64, 64))
    torch.testing.assert_close(out.anomaly_map, distance)  # localisation stays the reconstruction distance
    d_score, e_score = image_score(distance, top_k=100), image_score(energy, top_k=100)
    torch.testing.assert_close(out.pred_score, (d_score - 0.3) / 0.1 + 2.0 * (e_score - 1.5) / 2.0)
    torch.testing.assert_close(model.component_scores(x), torch.stack([d_score, e_score], dim=1))
    with model.inference_only():
        program = torch.export.export(model, (x,))
    to_param = program.graph_signature.inputs_to_parameters
    used = {to_param[n.name] for n in program.graph.nodes if n.op == "placeholder" and n.name in to_param and n.users}
    assert any(name.startswith("patch_discriminator.") for name in used)  # the export carries the (small) patch D
    torch.testing.assert_close(program.module()(x).anomaly_map, out.anomaly_map)
    with pytest.raises(ValueError, match=r"energy_weight=1\.0 needs a patch discriminator"):
        CkaadModel(**RESNET18, input_size=(64, 64), discriminator="image", energy_weight=1.0)
    with pytest.raises(ValueError, match=r"energy_weight='often'"):
        CkaadModel(**RESNET18, input_size=(64, 64), energy_weight="often")
    auto = CkaadModel(**RESNET18, input_size=(64, 64), energy_weight="auto")
    assert auto.fused
    assert auto.auto_components == ["energy"]
    assert auto.score_weights.tolist() == [1.0, 1.0]  # until validation chooses


def test_without_the_fused_score_no_statistics_are_saved() -> None:
    model = CkaadModel(**RESNET18, input_size=(64, 64))
    assert not {"score_mean", "score_std"} & set(model.state_dict())  # checkpoints keep their keys
    with pytest.raises(ValueError, match="needs a fused score"):
        model.component_scores(torch.randn(2, 3, 64, 64))


def test_nearest_normal_score_joins_the_fused_score_and_travels_with_the_model(seeded: None) -> None:
    model = CkaadModel(**RESNET18, input_size=(64, 64), discriminator=None, knn_weight=0.5, memory_bank_size=40)
    assert model.components == ["distance", "nearest"]
    assert model.nearest is not None
    model.eval()
    x = torch.randn(2, 3, 64, 64)
    with pytest.raises(RuntimeError, match=r"normal training images is empty.*num_sanity_val_steps=0"):
        model(x)  # never a silent score from an untrained bank
    bank = model.nearest.patches(model.extract(torch.randn(3, 3, 64, 64)))
    assert bank.shape == (3, 8 * 8, 128 + 256)  # PatchCore's layout: two deepest stages at the shallower's size
    bank = bank.reshape(-1, 384)
    model.nearest.set_memory_bank(bank)
    assert model.nearest.memory_bank.shape == (40, 384)  # a random subset of bank_size rows
    kept = torch.randperm(192, generator=torch.Generator().manual_seed(0))[:40]
    torch.testing.assert_close(model.nearest.memory_bank, bank[kept])
    model.set_score_statistics(torch.tensor([0.3, 2.0]), torch.tensor([0.1, 4.0]))
    out = model(x)
    features = model.extract(x)
    distance, nearest = model.component_maps(features, model.autoencoder(features), (64, 64))
    torch.testing.assert_close(out.anomaly_map, distance)
    d_score, n_score = image_score(distance, top_k=100), image_score(nearest, top_k=100)
    torch.testing.assert_close(out.pred_score, (d_score - 0.3) / 0.1 + 0.5 * (n_score - 2.0) / 4.0)
    # brute force: each position's distance to its nearest bank row, before upsampling and blur
    queries = model.nearest.patches(features).reshape(-1, 384)
    brute = torch.cdist(queries, model.nearest.memory_bank).min(1).values.reshape(2, 1, 8, 8)
    torch.testing.assert_close(model.nearest(features), brute, atol=1e-3, rtol=1e-4)

    # a fresh model (empty bank) loads a trained one's bank; exports carry it
    fresh = CkaadModel(**RESNET18, input_size=(64, 64), discriminator=None, knn_weight=0.5, memory_bank_size=40)
    fresh.load_state_dict(model.state_dict())
    torch.testing.assert_close(fresh.eval()(x).pred_score, out.pred_score)
    program = torch.export.export(model, (x,))
    constants = {**program.state_dict, **program.constants}
    assert any(v.shape == (40, 384) for v in constants.values())
    torch.testing.assert_close(program.module()(x).pred_score, out.pred_score)
    with pytest.raises(ValueError, match=r"knn_weight=-1 must be a number >= 0\.$"):
        CkaadModel(**RESNET18, input_size=(64, 64), knn_weight=-1)
    with pytest.raises(ValueError, match=r"coarse_weight='often' must be a number >= 0 or 'auto'"):
        CkaadModel(**RESNET18, input_size=(64, 64), coarse_weight="often")
    with pytest.raises(ValueError, match="every score weight is 0"):
        CkaadModel(**RESNET18, input_size=(64, 64), distance_weight=0)


def test_fused_map_is_the_standardised_weighted_sum_of_the_component_maps(seeded: None) -> None:
    kwargs = {**RESNET18, "input_size": (64, 64), "discriminator": None, "knn_weight": 0.5, "memory_bank_size": 40}
    model = CkaadModel(**kwargs, fused_map=True).eval()  # type: ignore[arg-type]
    assert model.nearest is not None
    model.nearest.set_memory_bank(model.nearest.patches(model.extract(torch.randn(3, 3, 64, 64))))
    model.set_score_statistics(torch.tensor([0.3, 2.0]), torch.tensor([0.1, 4.0]))
    x = torch.randn(2, 3, 64, 64)
    out = model(x)
    features = model.extract(x)
    distance, nearest = model.component_maps(features, model.autoencoder(features), (64, 64))
    torch.testing.assert_close(out.anomaly_map, (distance - 0.3) / 0.1 + 0.5 * (nearest - 2.0) / 4.0)
    # the image score is unchanged by the map option
    paper_map = CkaadModel(**kwargs).eval()  # type: ignore[arg-type]
    paper_map.load_state_dict(model.state_dict())
    torch.testing.assert_close(paper_map(x).pred_score, out.pred_score)
    torch.testing.assert_close(paper_map(x).anomaly_map, distance)
    with pytest.raises(ValueError, match="fused_map needs a fused score"):
        CkaadModel(**RESNET18, input_size=(64, 64), fused_map=True)


def test_a_fused_map_without_the_distance_never_runs_the_autoencoder(seeded: None) -> None:
    kwargs = {**RESNET18, "input_size": (64, 64), "knn_weight": 1, "memory_bank_size": 40}
    model = CkaadModel(**kwargs, distance_weight=0, fused_map=True).eval()  # type: ignore[arg-type]
    assert not model.uses_reconstructions
    assert not model.learns
    assert model.nearest is not None
    model.nearest.set_memory_bank(model.nearest.patches(model.extract(torch.randn(3, 3, 64, 64))))
    x = torch.randn(2, 3, 64, 64)
    expected = model(x)
    (nearest,) = model.component_maps(model.extract(x), None, (64, 64))
    torch.testing.assert_close(expected.anomaly_map, nearest)  # statistics 0 / 1, weight 1
    model.autoencoder.forward = None  # type: ignore[assignment,method-assign]  # any call now fails
    torch.testing.assert_close(model(x).pred_score, expected.pred_score)
    torch.testing.assert_close(model.component_scores(x)[:, 0], expected.pred_score)
    program = torch.export.export(model, (x,))
    used = {node.name for node in program.graph.nodes if node.op == "placeholder" and node.users}
    parameters = program.graph_signature.inputs_to_parameters  # placeholder → parameter name
    assert not any("autoencoder" in name for node, name in parameters.items() if node in used)  # nor does the export
    assert any("extractor" in name for node, name in parameters.items() if node in used)
    # the auto-encoder reaches the output: as the anomaly map, through the distance score, or D through the energy
    assert CkaadModel(**kwargs, distance_weight=0).uses_reconstructions  # type: ignore[arg-type]
    assert CkaadModel(**kwargs, fused_map=True).uses_reconstructions  # type: ignore[arg-type]
    with_energy = CkaadModel(**kwargs, distance_weight=0, fused_map=True, energy_weight=1)  # type: ignore[arg-type]
    assert not with_energy.uses_reconstructions
    assert with_energy.learns
    with pytest.raises(ValueError, match="uses the auto-encoder"):
        CkaadModel(**kwargs).eval().score(model.extract(x), None, (64, 64))  # type: ignore[arg-type]


def test_nearest_layers_choose_the_banks_stages_and_so_the_maps_resolution(seeded: None) -> None:
    resnet = {**RESNET18, "layers": ["layer1", "layer2", "layer3"], "input_size": (64, 64), "discriminator": None}
    kwargs = {**resnet, "distance_weight": 0, "knn_weight": 1, "coarse_weight": 1, "memory_bank_size": 40}
    model = CkaadModel(**kwargs, nearest_layers=["layer2", "layer1"])  # type: ignore[arg-type]
    assert model.nearest is not None
    assert model.coarse is not None
    features = model.extract(torch.randn(2, 3, 64, 64))
    # shallow first whatever the order given: layer1 (stride 4, 64 ch) at its 16×16 grid, then layer2 (128 ch)
    assert model.nearest.patches(features).shape == (2, 16 * 16, 64 + 128)
    assert model.coarse.patches(features).shape == (2, 16 * 16, 64 + 128)
    torch.testing.assert_close(model.nearest.embed(features)[:, :64], model.nearest.pool(features[0]))
    default = CkaadModel(**kwargs)  # type: ignore[arg-type]
    assert default.nearest is not None
    assert default.nearest.patches(features).shape == (2, 8 * 8, 128 + 256)  # PatchCore's: the two deepest
    with pytest.raises(ValueError, match=r"nearest_layers=\['layer4'\] must be a non-empty subset of layers"):
        CkaadModel(**kwargs, nearest_layers=["layer4"])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="needs a memory bank: set knn_weight or coarse_weight"):
        CkaadModel(**resnet, nearest_layers=["layer1"])  # type: ignore[arg-type]


def test_nearest_normalize_compares_the_features_directions_not_their_magnitudes(seeded: None) -> None:
    kwargs = {**RESNET18, "input_size": (64, 64), "discriminator": None, "knn_weight": 1.0, "memory_bank_size": 512}
    features = CkaadModel(**kwargs).extract(torch.randn(2, 3, 64, 64))  # type: ignore[arg-type]
    # every position of every stage stretched by its own positive factor: same directions, other magnitudes
    stretched = [f * (1 + 4 * torch.rand(len(f), 1, *f.shape[-2:])) for f in features]
    farthest = {}
    for normalize in (False, True):
        model = CkaadModel(**kwargs, nearest_normalize=normalize)  # type: ignore[arg-type]
        assert model.nearest is not None
        model.nearest.set_memory_bank(model.nearest.patches(features))  # 2 × 8 × 8 rows: the whole bank
        farthest[normalize] = model.nearest(stretched).max().item()
        assert model.nearest(features).max().item() < 1e-2  # each query is in the bank either way
    assert farthest[True] < 1e-2  # unit vectors: the stretched features are the bank's own
    assert farthest[False] > 1.0
    with pytest.raises(ValueError, match="nearest_normalize=True needs a memory bank: set knn_weight or coarse_weight"):
        CkaadModel(**RESNET18, input_size=(64, 64), nearest_normalize=True)  # type: ignore[arg-type]


def test_nearest_normalize_auto_builds_both_banks_and_a_checkpoint_keeps_the_chosen_one(seeded: None) -> None:
    kwargs = {**RESNET18, "input_size": (64, 64), "discriminator": None, "knn_weight": 1.0, "coarse_weight": 1.0}
    model = CkaadModel(**kwargs, nearest_normalize="auto")  # type: ignore[arg-type]
    candidates = model.bank_candidates
    assert [(pair.nearest.normalize, pair.coarse.normalize) for pair in candidates] == [(False, False), (True, True)]  # type: ignore[union-attr]
    assert model.bank_pairs() == candidates
    assert (model.nearest, model.coarse) == tuple(candidates[0])  # raw until validation chooses
    features = model.extract(torch.randn(2, 3, 64, 64))
    for pair in candidates:
        pair.nearest.set_memory_bank(pair.nearest.patches(features))
        pair.coarse.set_memory_bank(pair.coarse.patches(features)[:, :4])  # type: ignore[union-attr]
    model.use_banks(candidates[1])
    model.bank_candidates = []  # what the Lightning module does once it has chosen
    state = model.state_dict()
    assert bool(state["nearest.normalized"])
    assert bool(state["coarse.normalized"])
    torch.testing.assert_close(state["nearest.memory_bank"], candidates[1].nearest.memory_bank)

    fresh = CkaadModel(**kwargs, nearest_normalize="auto")  # type: ignore[arg-type]
    fresh.load_state_dict(state)
    assert fresh.bank_candidates == []  # filled banks loaded: nothing left to choose
    assert fresh.nearest is not None
    assert fresh.nearest.normalize
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(fresh.eval()(x).pred_score, model.eval()(x).pred_score)
    # a checkpoint from before the flag was saved keeps the constructor's setting
    old = {k: v for k, v in state.items() if not k.endswith(".normalized")}
    plain = CkaadModel(**kwargs, nearest_normalize=True)  # type: ignore[arg-type]
    plain.load_state_dict(old)
    assert plain.nearest is not None
    assert plain.nearest.normalize
    with pytest.raises(ValueError, match="nearest_normalize='often' must be true, false or 'auto'"):
        CkaadModel(**kwargs, nearest_normalize="often")  # type: ignore[arg-type]


def test_coreset_bank_covers_the_embeddings_that_a_random_subset_of_its_size_misses(seeded: None) -> None:
    # 990 rows in a tight cluster and 10 outliers far from it and from each other: a random 40-row subset keeps
    # about 0.4 of the outliers, PatchCore's greedy k-center coreset takes each (farther than any cluster row)
    cluster = torch.randn(990, 8) * 0.01
    outliers = 10.0 * torch.arange(1, 11, dtype=torch.float32)[:, None].expand(10, 8)
    rows = torch.cat([cluster, outliers])
    kwargs = {**RESNET18, "input_size": (64, 64), "discriminator": None, "knn_weight": 0.5, "memory_bank_size": 40}
    radius = {}
    for sampling in ("random", "coreset"):
        model = CkaadModel(**kwargs, memory_bank_sampling=sampling)  # type: ignore[arg-type]
        assert model.nearest is not None
        model.nearest.set_memory_bank(rows)
        bank = model.nearest.memory_bank
        assert bank.shape == (40, 8)
        radius[sampling] = torch.cdist(rows, bank).min(dim=1).values.max().item()  # the farthest row's distance
        model.nearest.set_memory_bank(rows)  # seeded: every DDP rank keeps the same rows
        torch.testing.assert_close(model.nearest.memory_bank, bank)
    assert radius["coreset"] < 0.2
    assert radius["random"] > 10
    with pytest.raises(ValueError, match=r"memory_bank_sampling='kmeans' must be one of \['random', 'coreset'\]"):
        CkaadModel(**kwargs, memory_bank_sampling="kmeans")  # type: ignore[arg-type]


def test_coarse_closeness_scores_patches_near_a_labelled_defect_higher(seeded: None) -> None:
    model = CkaadModel(**RESNET18, input_size=(64, 64), distance_weight=0, knn_weight=1, coarse_weight="auto")
    assert model.components == ["nearest", "coarse"]
    assert model.auto_components == ["coarse"]
    assert model.coarse is not None
    assert model.nearest is not None
    model.eval()
    normal, defect = torch.randn(4, 3, 64, 64), torch.randn(1, 3, 64, 64)
    model.nearest.set_memory_bank(model.nearest.patches(model.extract(normal)))
    with pytest.raises(RuntimeError, match="coarse anomalies of the training batches is empty"):
        model(defect)
    model.coarse.set_memory_bank(model.coarse.patches(model.extract(defect)))
    features = model.extract(torch.cat([normal[:1], defect]))
    (closeness,) = model.component_maps(features, model.autoencoder(features), (64, 64), ["coarse"])
    assert closeness[1].max() > closeness[0].max()  # the labelled defect's own patches are closest to the bank
    assert "coarse.memory_bank" in model.state_dict()
