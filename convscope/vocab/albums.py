"""Albums: a readable WordNet category for each ImageNet class ("animals > dogs", "food").

A fixed list of 25 categories, each one or a few WordNet synsets, chosen to be words a person
files photos under and to cover most classes (850 of the 1,000; the generator prints the count
per album). A class goes to the first album in :data:`ALBUMS` whose synsets include the class or
one of its ancestors, so the narrower albums come first ("animals > dogs" before "animals >
mammals", kitchenware before containers). The 150 classes that no album names (a padlock, an
umbrella, a rifle) get None: ``organize`` groups them by their embeddings instead.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cache

from .wordnet import Vocabulary


@dataclass(frozen=True)
class Album:
    """``path``: the album's names from the broadest, ``("animals", "dogs")``; ``synsets``: the
    WordNet ids whose classes it holds."""

    path: tuple[str, ...]
    synsets: tuple[str, ...]

    @property
    def name(self) -> str:
        return " > ".join(self.path)


ALBUMS = (
    Album(("animals", "dogs"), ("n02084071",)),  # dog
    Album(("animals", "cats"), ("n02120997",)),  # feline: house cats and big cats
    Album(("animals", "mammals"), ("n01861778",)),  # mammal
    Album(("animals", "birds"), ("n01503061",)),  # bird
    Album(("animals", "reptiles and amphibians"), ("n01661091", "n01627424")),  # reptile, amphibian
    Album(("animals", "fish"), ("n02512053",)),  # fish
    Album(("animals", "insects"), ("n02159955",)),  # insect
    Album(("animals", "invertebrates"), ("n01905661",)),  # invertebrate: spiders, crabs, snails
    Album(("people",), ("n00007846",)),  # person
    Album(("plants and fungi",), ("n00017222", "n12992868")),  # plant, fungus
    Album(("food", "fruit and vegetables"), ("n07705711", "n13134947")),  # produce, fruit
    Album(("food",), ("n00021265", "n07555863")),  # food (nutrient), food (solid food)
    Album(("landscapes",), ("n09287968",)),  # geological formation
    Album(("vehicles", "cars and trucks"), ("n03791235",)),  # motor vehicle
    Album(("vehicles", "boats"), ("n04530566",)),  # vessel (watercraft)
    Album(("vehicles",), ("n04524313", "n04019101")),  # vehicle, public transport
    Album(("musical instruments",), ("n03800933",)),  # musical instrument
    Album(("clothing",), ("n03051540", "n03380867", "n02739668")),  # clothing, footwear, armor
    Album(("furniture",), ("n03405725",)),  # furniture
    Album(("buildings and structures",), ("n04341686",)),  # structure
    # electronic equipment, computer, appliance, electronic device, electrical device,
    # communication system, photographic equipment
    Album(("electronics and appliances",),
          ("n03278248", "n03082979", "n02729837", "n03277771", "n03269401", "n03078287", "n03926148")),
    Album(("sports and games",), ("n04285146", "n03414162")),  # sports, game equipment
    Album(("kitchenware",), ("n03621049", "n04381994")),  # kitchen utensil, tableware
    Album(("tools and instruments",), ("n04451818", "n03733925")),  # tool, measuring instrument
    Album(("containers",), ("n03094503",)),  # container: bags, boxes, baskets
)


def categories(class_index: int, depth: int | None = None) -> tuple[str, ...]:
    """The album path of ImageNet class ``class_index`` (0 to 999), broadest first, cut to
    ``depth`` names: ``categories(207) == ("animals", "dogs")``, ``categories(207, 1) ==
    ("animals",)``; ``()`` for a class that no album names."""
    album = _album_of()[class_index]
    path = album.path if album else ()
    return path if depth is None else path[:depth]


def album_for(class_index: int) -> str | None:
    """The album name of ImageNet class ``class_index``: ``album_for(207) == "animals > dogs"``;
    None for a class that no album names."""
    album = _album_of()[class_index]
    return album.name if album else None


def coverage() -> dict[str, int]:
    """How many of the 1,000 classes each album holds, in the order of :data:`ALBUMS`."""
    counts = {album.name: 0 for album in ALBUMS}
    for album in _album_of():
        if album:
            counts[album.name] += 1
    return counts


@cache
def _album_of() -> tuple[Album | None, ...]:
    vocab = Vocabulary.load()
    out = []
    for index in range(len(vocab.labels)):
        above = vocab.ancestors(index)
        out.append(next((a for a in ALBUMS if above.intersection(a.synsets)), None))
    return tuple(out)
