"""Write convscope/imagenet_labels.py: the ImageNet-1k class names, index -> label, as
``convscope.models.imagenet_labels()`` returned them from timm's ``ImageNetInfo`` (the first
synonym of each class description). Shipping them as a module lets a model get its labels
without importing timm (and through it torchvision); tests/test_cli.py checks that the two agree.

    python tools/make_imagenet_labels.py
"""
from __future__ import annotations

from pathlib import Path

from timm.data import ImageNetInfo

OUT = Path(__file__).resolve().parents[1] / "convscope" / "imagenet_labels.py"


def labels() -> list[str]:
    info = ImageNetInfo()
    return [info.index_to_description(i).split(",")[0].strip() for i in range(info.num_classes())]


def main() -> None:
    rows = "".join(f"    {name!r},\n" for name in labels())
    OUT.write_text(
        '"""ImageNet-1k class names in the standard index order (written by\n'
        "tools/make_imagenet_labels.py from timm's ImageNetInfo; no imports, so reading them is instant).\"\"\"\n"
        "\n"
        f"LABELS: tuple[str, ...] = (\n{rows})\n"
    )


if __name__ == "__main__":
    main()
