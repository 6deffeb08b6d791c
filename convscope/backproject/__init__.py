"""Projections of one layer unit back to input pixels: deconvnet, guided backprop, plain gradient.

A projection is the input gradient of one unit ``(channel, y, x)`` of a layer's output, computed
with the backward pass of every ReLU-family nonlinearity replaced by a rule (the max-pools keep
their normal backward, so their switches route the signal as in Zeiler & Fergus 2014, and the
convolutions keep theirs, which applies the transposed filters):

=============  ==============================================================================
method         backward of a ReLU ``y = relu(x)`` given the signal ``g`` arriving at ``y``
=============  ==============================================================================
``deconvnet``  ``relu(g)``: the signal is rectified, the forward pass is ignored (Zeiler &
               Fergus 2014, "Visualizing and understanding convolutional networks")
``guided``     ``relu(g) * (x > 0)``: rectified, then the unit's own backward (Springenberg et
               al. 2015, "Striving for simplicity")
``gradient``   ``g * (x > 0)``: unchanged (Simonyan et al. 2014 saliency)
=============  ==============================================================================

Mechanism apart from policy (as zennit): :data:`METHODS` holds the rules, one line each;
:func:`modified_backward` holds the hooks and their lifetime. The rule is installed with forward
hooks on the activation modules only (never full backward hooks, which break on in-place ReLUs):
a forward pre-hook hands the module a detached alias of its input, so the module's own backward
is never recorded; the forward hook then re-attaches its output to the input's graph through
:class:`_RuleUnit`, whose backward applies the rule in force *when the backward pass runs*:
``relu(g)`` straight to the input (deconvnet), or the signal, rectified or not, times the unit's
own derivative (guided, gradient; for ReLUs and clamps computed from the saved output by
PyTorch's own backward kernels, for smooth rectifiers taken at the forward pass; guided's two
steps at a ReLU or clamp run as one ``clamp(g, 0, limit)``, the limit kept per forward pass: the
same values; as two they took 39 % of a whole-input backward pass through EfficientNet). So one
recorded forward pass serves several methods (:func:`forward_pass`, :func:`project_methods`;
``retain_graph`` between their backward passes). In-place modules work: the alias shares
storage, and :class:`_RuleUnit` marks the tensor dirty exactly as an in-place op would, so the
model sees the very same values and aliasing as without convscope.

Every hook lives inside the ``with`` block and is removed in ``finally``; closures hold the
context's state through weak references. A module that runs several times in one forward pass
(ResNet's ``BasicBlock.relu``) gets the rule at every call.

The projected unit's own activation (a layer that ends in one, as timm's ``BatchNormAct2d``)
rectifies its seed but does not mask it under guided backprop: a ReLU6 unit saturated at 6 (most
of EfficientNet's top examples at ``bn2``) would otherwise project to nothing, and below
saturation the mask is 1 there anyway. The plain gradient stays the true gradient.

Activations other than ``nn.ReLU`` get a documented rule, and one :class:`ActivationRuleWarning`
per layer names it:

* clamps that are ReLUs with a ceiling (``ReLU6``, ``Hardtanh(0, max)``): treated as a ReLU.
  deconvnet: ``relu(g)``; guided: ``relu(g)`` then the clamp's own gradient (passes where
  ``0 < x < max``).
* other rectifiers, leaky or smooth (``LeakyReLU``, ``PReLU``, ``ELU``, ``GELU``, ``SiLU``,
  ``Mish``, ``Hardswish``, ``Softplus``, timm's versions): the backward signal is rectified the
  same way. deconvnet: ``relu(g)``; guided: ``relu(g)`` times the unit's own derivative.
* gates and squashing functions (``Sigmoid``, ``Hardsigmoid``, ``Tanh``, ``Hardtanh(-1, 1)``,
  squeeze-excitation gates): no rule; they keep their ordinary gradient.

Functional calls that no module hook can see (``F.relu`` inside a ``forward``) are caught by a
``TorchFunctionMode`` while the forward pass runs, and get the same rules; the one case that
cannot be done exactly, an *in-place* functional call (``F.relu(x, inplace=True)``,
``x.relu_()``) under deconvnet, gets the guided rule instead, with a warning saying so.

The rules act on any backward pass run inside :func:`modified_backward`; :func:`project` is the
usual entry point.

>>> from convscope import load_model
>>> model = load_model("torchvision:alexnet", pretrained=False)
>>> x = torch.randn(2, 3, 112, 112)
>>> pixels = project(model, x, "features.10", units=[3, 7])   # (2, 3, 112, 112)
>>> picture, _box = convscope.display.to_picture(pixels[0])   # (112, 112, 3) uint8

The package, one idea per module, each importing only from those above it in this list:

* :mod:`~convscope.backproject.rules`: the rules (policy): :data:`METHODS`, :func:`activation_kind`
  and the notes on substitute rules;
* :mod:`~convscope.backproject.core`: the mechanism: :func:`modified_backward`, its hooks and
  their lifetime;
* :mod:`~convscope.backproject.project`: the entry points: :func:`forward_pass`,
  :func:`project_methods`, :func:`project_full`, :func:`project`, :func:`check_ranges` (a
  projection's picture is :func:`convscope.display.to_picture`'s);
* :mod:`~convscope.backproject.batching`: many examples at once, each on the window of its
  receptive field (:func:`project_boxes`, as ``atlas build`` runs them);
* :mod:`~convscope.backproject.independence`: whether a layer's deconvnet depends on the image
  at all (:func:`deconvnet_dependence`: not without max-pool switches or other routing), and
  so which methods a layer gets (:func:`layer_methods`);
* :mod:`~convscope.backproject.private`: the faster private copy of a model that the atlas
  projects on (:func:`projection_module`).
"""
from __future__ import annotations

from .batching import field_window, project_boxes
from .core import Rules, modified_backward
from .independence import (Dependence, Difference, LayerMethods, Switch, check_deconvnet,
                           deconvnet_dependence,
                           deconvnet_depends_on_image, deconvnet_difference, layer_methods, methods_for)
from .private import projection_module
from .project import (
    ForwardPass,
    Projection,
    ProjectionError,
    check_ranges,
    forward_pass,
    project,
    project_full,
    project_methods,
)
from .rules import METHODS, ActivationRuleWarning, Rule, activation_kind, get_rule

__all__ = [
    "METHODS",
    "ActivationRuleWarning",
    "Dependence",
    "Difference",
    "ForwardPass",
    "LayerMethods",
    "Projection",
    "ProjectionError",
    "Rule",
    "Rules",
    "activation_kind",
    "Switch",
    "check_deconvnet",
    "check_ranges",
    "deconvnet_dependence",
    "deconvnet_depends_on_image",
    "deconvnet_difference",
    "field_window",
    "forward_pass",
    "get_rule",
    "layer_methods",
    "methods_for",
    "modified_backward",
    "project",
    "project_boxes",
    "project_full",
    "project_methods",
    "projection_module",
]
