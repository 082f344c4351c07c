"""Fill a built network from any weights source a user can pass as ``init_from``: a Lightning checkpoint, a
network state dict, torchvision's DeepLabV3, a TF DeepLab checkpoint or a Caffe ``.caffemodel``."""

from __future__ import annotations

from pathlib import Path

from ..errors import CheckpointError, ConfigError
from .caffe_convert import read_caffe_state_dict
from .deeplab import DeepLabNet
from .tf_zoo import is_tf_checkpoint, load_tf_checkpoint
from .weights import convert_torchvision_deeplabv3, load_checked, read_state_dict


def load_network(net: DeepLabNet, source: str | Path, reset_classifier: bool = False) -> None:
    """Load ``net``'s weights from ``source``, strictly (every weight used, every parameter filled).

    A TF checkpoint is given by its prefix ``.../model.ckpt``; a Caffe ``.caffemodel`` of the V1/V2 releases loads
    into a network built as in ``experiments/configs/official/``. A different class count is an error unless
    ``reset_classifier`` re-initialises the classifiers (fine-tuning to new classes).
    """
    if is_tf_checkpoint(source):
        if reset_classifier:
            raise ConfigError(f"reset_classifier applies to PyTorch checkpoints; {source} is a TF checkpoint")
        load_tf_checkpoint(net, source)
        return
    if str(source).endswith(".caffemodel"):
        state = read_caffe_state_dict(net, source, skip_classifiers=reset_classifier)
    else:
        state = read_state_dict(source, "deeplab", "--model.init_args.init_from")
    if any(k.startswith("net.") for k in state):
        state = {k[4:]: v for k, v in state.items() if k.startswith("net.")}
    elif any(k.startswith("classifier.0.convs.") for k in state):
        state = convert_torchvision_deeplabv3(state)
    own = net.state_dict()
    heads = tuple(f"{name}." for name in net.classifier_names())
    head_keys = [k for k in own if k.startswith(heads)]
    if reset_classifier:
        state = {k: v for k, v in state.items() if not k.startswith(heads)}
        state.update({k: own[k] for k in head_keys})
    else:
        bad = [k for k in head_keys if k in state and state[k].shape != own[k].shape]
        if bad:
            raise CheckpointError(
                f"{source} was trained for {state[bad[0]].shape[0]} classes, this model has {own[bad[0]].shape[0]}; "
                "pass reset_classifier=True (--model.reset_classifier true) to fine-tune with new classifiers"
            )
    load_checked(net, state, source=source)
