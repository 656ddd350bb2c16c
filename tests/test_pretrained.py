"""Loading checkpoints into ready models, and classifying one's own images with them."""

import zipfile

import pytest
import torch
from PIL import Image

from metalib import evaluation, pretrained, recipes
from metalib.algorithms import cnp, mann, transfer
from metalib.data import omniglot
from metalib.recipes import (
    cnp_sinusoid,
    mann_omniglot,
    metric_omniglot,
    sinusoid,
    transfer_omniglot,
)
from metalib.recipes.metric_omniglot import MetricConfig


@pytest.fixture
def tiny(small_omniglot, tmp_path):
    data_dir, specs = small_omniglot
    return omniglot.load(data_dir, cache_dir=tmp_path / "cache", download=False, specs=specs)


def first_png(zip_path):
    with zipfile.ZipFile(zip_path) as archive:
        name = sorted(n for n in archive.namelist() if n.endswith(".png"))[0]
        return name, archive.read(name)


def test_image_to_tensor_matches_the_dataset_pipeline(small_omniglot, tiny, tmp_path):
    data_dir, _ = small_omniglot
    _, png = first_png(data_dir / "images_background.zip")  # Alpha/character01, drawer 1
    path = tmp_path / "mine.png"
    path.write_bytes(png)
    from_path = omniglot.image_to_tensor(path)
    with Image.open(path) as image:
        from_image = omniglot.image_to_tensor(image)
    expected = tiny.images[0].float() / 255  # what the episodes hold for that image
    assert from_path.shape == (1, 28, 28) and from_path.dtype == torch.float32
    assert torch.equal(from_path[0], expected) and torch.equal(from_image, from_path)


def test_image_to_tensor_matches_the_real_dataset(real_omniglot, tmp_path):
    name, png = first_png(real_omniglot.data_dir / "images_background.zip")
    (tmp_path / "real.png").write_bytes(png)
    index = real_omniglot.character_index("/".join(name.split("/")[1:3]))
    drawer = int(name.rsplit("_", 1)[1][:2]) - 1
    expected = real_omniglot.by_character()[index, drawer].float() / 255
    assert torch.equal(omniglot.image_to_tensor(tmp_path / "real.png")[0], expected)


def test_image_to_tensor_bad_input(tmp_path):
    with pytest.raises(ValueError, match="100×100 pixels"):
        omniglot.image_to_tensor(Image.new("L", (100, 100), 255))
    with pytest.raises(ValueError, match=r"mode 'RGB'.*convert\('L'\)"):
        omniglot.image_to_tensor(Image.new("RGB", (105, 105)))
    with pytest.raises(FileNotFoundError, match="no image at"):
        omniglot.image_to_tensor(tmp_path / "missing.png")
    blank = omniglot.image_to_tensor(Image.new("1", (105, 105), 1))  # white: no ink
    assert torch.equal(blank, torch.zeros(1, 28, 28))


def test_shipped_names_load_into_ready_models():
    names = pretrained.shipped()
    assert "sinusoid_maml" in names and "maml_omniglot_5w1s_cpu_demo" in names
    learner = pretrained.load("sinusoid_maml")
    assert isinstance(learner, sinusoid.Learner)
    classifier = pretrained.load("maml_omniglot_5w1s_cpu_demo")
    assert classifier.recipe == "maml-omniglot" and not classifier.model.training
    assert classifier.sidecar["metrics"]["test_episodes"] == 600
    with pytest.raises(FileNotFoundError, match="no shipped checkpoint named 'nope'"):
        pretrained.load("nope")


def test_maml_classifier_adapts_to_the_support_set(tiny):
    classifier = pretrained.load("maml_omniglot_5w1s_cpu_demo")
    batch = evaluation.evaluation_sampler(tiny, scheme="lake", n_way=5, k_shot=1).sample(
        1, generator=torch.Generator().manual_seed(0)
    )
    scores = classifier.scores(batch.x_support[0], batch.y_support[0], batch.x_query[0])
    assert scores.shape == (75, 5) and torch.isfinite(scores).all()
    # The tiny archive's rectangles are easy: adapted MAML gets most queries right.
    accuracy = (
        classifier.predict(batch.x_support[0], batch.y_support[0], batch.x_query[0])
        == batch.y_query[0]
    )
    assert accuracy.float().mean() > 0.5
    with pytest.raises(ValueError, match=r"labels must lie in 0\.\.4"):
        classifier.scores(batch.x_support[0], batch.y_support[0] + 1, batch.x_query[0])


def test_metric_classifier_scores_as_the_library_does(tiny, tmp_path):
    config = MetricConfig(scheme="lake", train_way=10, k_query=3, meta_steps=2)
    trained = metric_omniglot.train(config, data=tiny, device="cpu", progress=False)
    pt, _ = recipes.save(trained, tmp_path / "p", metrics={}, command=None)
    classifier = pretrained.load(pt)
    batch = evaluation.evaluation_sampler(tiny, scheme="lake").sample(
        1, generator=torch.Generator()
    )
    scores = classifier.scores(batch.x_support[0], batch.y_support[0], batch.x_query[0])
    with torch.no_grad():
        expected = metric_omniglot.episode_logits(
            trained.model.eval(), config, *batch.support, batch.x_query
        )
    torch.testing.assert_close(scores, expected[0])
    with pytest.raises(ValueError, match=r"x_query must be \(n, 1, 28, 28\)"):
        classifier.scores(batch.x_support[0], batch.y_support[0], batch.x_query[0, :, 0])
    with pytest.raises(ValueError, match="one label per support image"):
        classifier.scores(batch.x_support[0], batch.y_support[0, :2], batch.x_query[0])


def test_cnp_checkpoints_load_as_ready_models(tmp_path):
    config = cnp_sinusoid.CNPConfig(meta_steps=2, meta_batch_size=4, hidden=8)
    trained = cnp_sinusoid.train(config, device="cpu", progress=False)
    recipes.save(trained, tmp_path / "cnp", metrics={}, command=None)
    model = pretrained.load(tmp_path / "cnp.pt")
    assert isinstance(model, cnp.CNP) and not model.training
    tasks = evaluation.held_out_tasks(3, k_shot=5)
    torch.testing.assert_close(
        model(tasks.x_support, tasks.y_support, tasks.x_query),
        trained.model(tasks.x_support, tasks.y_support, tasks.x_query),
    )


def test_mann_and_transfer_checkpoints_load_as_ready_models(tiny, tmp_path):
    mann_config = mann_omniglot.MANNConfig(
        n_way=3, instances=2, meta_steps=1, meta_batch_size=2, scheme="lake"
    )
    trained_mann = mann_omniglot.train(mann_config, data=tiny, device="cpu", progress=False)
    recipes.save(trained_mann, tmp_path / "mann", metrics={}, command=None)
    assert isinstance(pretrained.load(tmp_path / "mann.pt"), mann.MANN)

    transfer_config = transfer_omniglot.TransferConfig(meta_steps=1, batch_size=4, scheme="lake")
    trained = transfer_omniglot.train(transfer_config, data=tiny, device="cpu", progress=False)
    recipes.save(trained, tmp_path / "transfer", metrics={}, command=None)
    loaded = pretrained.load(tmp_path / "transfer.pt")
    assert isinstance(loaded, transfer.PretrainedClassifier) and not loaded.training


def test_original_png_is_the_archive_drawing(small_omniglot, tiny, tmp_path):
    data_dir, _ = small_omniglot
    name, png = first_png(data_dir / "images_background.zip")
    assert omniglot.original_png(tiny, 0, drawer=0) == (name, png)
    member, other = omniglot.original_png(tiny, 0, drawer=3)
    (tmp_path / "d.png").write_bytes(other)
    expected = tiny.by_character()[0, 3].float() / 255
    assert member != name and torch.equal(omniglot.image_to_tensor(tmp_path / "d.png")[0], expected)
    with pytest.raises(ValueError, match=r"drawer=20 must lie in 0\.\.19"):
        omniglot.original_png(tiny, 0, drawer=20)


def test_recorded_accuracy_reads_the_sidecars():
    sidecar = pretrained.load("protonet_omniglot_1shot").sidecar["metrics"]["test_accuracy"]
    assert (
        pretrained.recorded_accuracy("protonet_omniglot_1shot", "20-way 1-shot")
        == sidecar["20-way 1-shot"]
    )
    assert pretrained.recorded_accuracy("protonet_omniglot_1shot", "5-way 5-shot") is None
    maml = pretrained.recorded_accuracy("maml_omniglot_5w1s_cpu_demo", "5-way 1-shot")
    assert maml["episodes"] == 600 and 0.85 < maml["mean"] < 1
    assert pretrained.recorded_accuracy("maml_omniglot_5w1s_cpu_demo", "20-way 1-shot") is None
    assert pretrained.recorded_accuracy("not_shipped", "5-way 1-shot") is None
