"""The attention registry: the block contract checked over every registered block, registration refusing blocks that
break it, a toy block with an option of its own that trains, saves and loads through train.py with no other edit,
the generic --attention-option flag and its older spellings, and configs written before attention_options."""
from __future__ import annotations

import logging
import re

import pytest
import torch
import yaml
from torch import nn

import train as train_script
from nets.attention import (
    ATTENTION_BLOCKS,
    OPTION_TYPES,
    AttentionBlock,
    attention_name,
    attention_names,
    attention_options,
    block_options,
    check_block_class,
    create_attention,
    identify_block,
    register_attention,
    unregister_attention,
)
from nets.errors import ModelConfigError
from nets.summary import variants
from tests.synthetic import make_voc
from utils.model.checkpoint import load_model, save_checkpoint
from utils.model.config import ModelConfig, build_model
from utils.study import ablate
from utils.study.factors import default_attentions
from utils.train.cli import OPTION_ALIASES, apply_config_file, config_from_args, get_args_parser
from utils.train.config import TrainConfig

FAST = ["--epochs", "1", "--batch-size", "2", "--input-shape", "64", "--workers", "0", "--device", "cpu",
        "--no-preview", "--no-amp", "--val-split", "none"]


# ------------------------------------------------------------------------------------- contract, over the registry
@pytest.mark.parametrize("name", [n for n in attention_names() if n != "none"])
def test_every_registered_block_keeps_the_contract(name):
    cls = ATTENTION_BLOCKS[name]
    check_block_class(cls)
    assert cls.name == name and attention_name(name) == name
    assert all(isinstance(v, OPTION_TYPES) for v in block_options(name).values())
    torch.manual_seed(0)
    for channels in (64, 128):
        block = create_attention(name, channels)
        x = torch.randn(2, channels, 5, 7)  # non-square: height and width must not be swapped
        assert isinstance(block, AttentionBlock) and block(x).shape == x.shape
        assert block.attention_map(x).shape == (2, 5, 7)
        assert identify_block(block.state_dict()) == (name, cls.options_of(block.state_dict()))
        gates = block.gate_layers()
        assert gates and all(isinstance(layer.weight, nn.Parameter) for layer in gates)
        block.start_as_identity()
        x.requires_grad_(True)
        y = block(x)
        assert torch.allclose(y, x, atol=1e-6), "start_as_identity must give exactly the identity"
        (y * torch.randn_like(y)).sum().backward()
        assert all(layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0 for layer in gates), \
            "the zeroed gate layers must still learn at once"


def test_phi_index_and_names_come_from_the_registry():
    assert attention_names()[:5] == ("none", "se", "cbam", "eca", "ca")
    assert [attention_name(i) for i in range(len(attention_names()))] == list(attention_names())
    assert get_args_parser().parse_args([]).attention_option is None
    assert ablate.get_args_parser().parse_args([]).phi is None  # no --phi, no --vary: every registered attention
    assert default_attentions() == ",".join(attention_names())
    assert {attention for attention, _ in variants()} == set(attention_names())


# --------------------------------------------------------------------------------------- registration refusals
class _Gate(AttentionBlock):
    def __init__(self, channels: int, gain: float = 1.0):
        super().__init__(gain)
        self.fc = nn.Conv2d(channels, channels, 1)

    def forward(self, x):
        return x * self.gain * torch.sigmoid(self.fc(x.mean((2, 3), keepdim=True)))

    def gate_layers(self):
        return [self.fc]

    def attention_map(self, x):
        return self.forward(x).square().mean(dim=1)


class _NoMap(AttentionBlock):
    def __init__(self, channels: int, gain: float = 1.0):
        super().__init__(gain)

    def gate_layers(self):
        return []


class _NoDefault(_Gate):
    def __init__(self, channels: int, alpha: float, gain: float = 1.0):
        super().__init__(channels, gain)


class _Kwargs(_Gate):
    def __init__(self, channels: int, gain: float = 1.0, **options):
        super().__init__(channels, gain)


class _ListDefault(_Gate):
    def __init__(self, channels: int, sizes: tuple = (3, 5), gain: float = 1.0):
        super().__init__(channels, gain)


class _NoGain(_Gate):
    def __init__(self, channels: int):
        super().__init__(channels)


class _BadFlags(_Gate):
    option_flags = {"alpha": "--alpha"}


@pytest.mark.parametrize("cls, message", [
    (nn.Identity, "is not an AttentionBlock subclass"),
    (_NoMap, "does not implement attention_map"),
    (_NoDefault, "option 'alpha' must be a named parameter with a default"),
    (_Kwargs, "option 'options' must be a named parameter with a default"),
    (_ListDefault, "options are bool, int, float, str or None"),
    (_NoGain, "must take `gain`"),
    (_BadFlags, "option_flags names ['alpha']"),
])
def test_registration_refuses_a_block_that_breaks_the_contract(cls, message):
    with pytest.raises(TypeError, match=re.escape(message)):
        register_attention("broken")(cls)
    assert "broken" not in ATTENTION_BLOCKS


def test_registration_refuses_taken_and_bad_names():
    with pytest.raises(ValueError, match="already registered"):
        register_attention("se")(_Gate)
    for bad in ("none", "3", "a b", ""):
        with pytest.raises(ValueError, match="identifier"):
            register_attention(bad)
    with pytest.raises(ValueError, match="cannot be unregistered"):
        unregister_attention("none")


# ------------------------------------------------------------------------------- a toy block with its own option
@pytest.fixture
def toy():
    """A block written the way docs/architecture.md says (one class, one decorator), with an option `alpha` that no
    built-in block has; removed from the registry afterwards."""

    @register_attention("toy")
    class TemperatureGate(AttentionBlock):
        """A channel gate sigmoid(alpha * conv(avg pool x)): nothing but a test of the registry."""

        def __init__(self, channels: int, alpha: float = 1.0, gain: float = 1.0):
            super().__init__(gain)
            if alpha <= 0:
                raise ModelConfigError(f"--attention-option alpha must be positive, got {alpha}")
            self.alpha = alpha
            self.fc = nn.Conv2d(channels, channels, 1, bias=False)

        def weights(self, x):
            return self.gain * torch.sigmoid(self.alpha * self.fc(x.mean((2, 3), keepdim=True)))

        def forward(self, x):
            return x * self.weights(x)

        def gate_layers(self):
            return [self.fc]

        def attention_map(self, x):
            return self.forward(x).square().mean(dim=1)

    yield TemperatureGate
    unregister_attention("toy")


def test_toy_block_options_are_typed_checked_and_listed(toy, caplog):
    assert attention_name(len(attention_names()) - 1) == "toy" and block_options("toy") == {"alpha": 1.0}
    assert attention_options("toy", {"alpha": "0.5"}) == {"alpha": 0.5}
    with pytest.raises(ModelConfigError, match="alpha must be positive"):
        ModelConfig(classes=["a"], attention="toy", attention_options={"alpha": -1})
    with pytest.raises(ModelConfigError, match="must be a float, got 'warm'"):
        ModelConfig(classes=["a"], attention="toy", attention_options={"alpha": "warm"})
    with caplog.at_level(logging.WARNING):  # another block's option: dropped with a warning (one ablation command)
        assert ModelConfig(classes=["a"], attention="se", attention_options={"alpha": 2}).attention_options == {
            "reduction": 16}
    assert "--attention-option alpha=2 ignored: attention se has no alpha option" in caplog.text
    assert "toy: alpha=1.0" in get_args_parser().format_help().replace("\n", " ").replace("  ", " ")


def test_toy_block_trains_saves_and_loads_with_no_other_edit(toy, tmp_path):
    data = make_voc(tmp_path / "voc", images=2)
    assert train_script.main(["--data", str(data), "--phi", "toy", "--attention-at", "both",
                              "--attention-option", "alpha=0.25", "--save-dir", str(tmp_path / "r"), *FAST]) == 0
    model, config = load_model(tmp_path / "r" / "exp" / "last.pth")
    assert (config.attention, config.attention_at, config.attention_options) == ("toy", "both", {"alpha": 0.25})
    blocks = model.attention_blocks()
    assert len(blocks) == 6 and all(isinstance(b, toy) and b.alpha == 0.25 for b in blocks.values())
    saved = yaml.safe_load((tmp_path / "r" / "exp" / "args.yaml").read_text())
    assert saved["attention_options"] == {"alpha": "0.25"}  # as given; the ModelConfig holds the typed value


# ------------------------------------------------------------------------------ flags, older spellings, old files
def test_older_flags_are_spellings_of_attention_option():
    parser = get_args_parser()
    args = parser.parse_args(["--phi", "cbam", "--cbam-kernel", "3", "--attention-reduction", "4",
                              "--attention-option", "reduction=2"])
    given = config_from_args(args).attention_options
    assert given == {"kernel_size": "3", "reduction": "2"}  # the last one wins
    assert ModelConfig(classes=["a"], attention="cbam", attention_options=given).attention_options == {
        "reduction": 2, "kernel_size": 3}
    with pytest.raises(ValueError, match="write NAME=VALUE"):
        config_from_args(parser.parse_args(["--attention-option", "kernel_size"]))
    # train.py spells these out (its parser imports no torch): they must be the flags the blocks declare
    declared = {flag: option for name in attention_names() if ATTENTION_BLOCKS[name] is not None
                for option, flag in ATTENTION_BLOCKS[name].option_flags.items()}
    assert declared == OPTION_ALIASES


def test_an_option_no_block_has_is_one_error_line(tmp_path, capsys):
    data = make_voc(tmp_path / "voc", images=2)
    assert train_script.main(["--data", str(data), "--phi", "cbam", "--attention-option", "kernal_size=3",
                              "--save-dir", str(tmp_path / "r"), *FAST]) == 1
    err = capsys.readouterr().err
    assert "error: no attention block has an option 'kernal_size'" in err and "Traceback" not in err


def test_configs_written_before_attention_options_still_load(tmp_path):
    """Checkpoints (ModelConfig and TrainConfig) and args.yaml with attention_reduction / cbam_kernel fields."""
    config = ModelConfig(classes=["a"], attention="cbam", input_shape=[64, 64],
                         attention_options={"reduction": 4, "kernel_size": 3})
    old = {k: v for k, v in config.to_dict().items() if k not in ("attention_options", "heads")}
    old.update(attention_reduction=4, cbam_kernel=3)
    save_checkpoint({"model": build_model(config).state_dict(), "config": old}, tmp_path / "old.pth")
    assert load_model(tmp_path / "old.pth")[1] == config
    plain = {**old, "attention": "se", "attention_reduction": None, "cbam_kernel": 7}  # as they were normalised
    assert ModelConfig.from_dict(plain).attention_options == {"reduction": 16}
    train_config = {k: v for k, v in TrainConfig().to_dict().items() if k != "attention_options"}
    assert TrainConfig.from_dict({**train_config, "attention_reduction": 8, "cbam_kernel": 7}).attention_options == {
        "reduction": 8}
    recipe = tmp_path / "old_args.yaml"
    recipe.write_text(yaml.safe_dump({"phi": "cbam", "attention_reduction": 4, "cbam_kernel": 3}))
    parser = get_args_parser()  # what train.py's main does with --config, short of training
    extra = apply_config_file(parser, str(recipe))
    args = parser.parse_args(["--config", str(recipe), "--attention-option", "reduction=2"])
    assert config_from_args(args, extra).attention_options == {"reduction": "2", "kernel_size": "3"}
