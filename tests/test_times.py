"""Time words of a query (convscope.vocab.times): what each reads as, the tokens it takes, and
which photo times it matches, with the why; dates that come from EXIF as a camera writes them."""
from __future__ import annotations

import datetime
import os

import pytest
from PIL import Image

from convscope.data import load_photo
from convscope.vocab.times import PARTS_OF_DAY, TimeTerm, When, date_words, file_time, parse, part_of_day, year_month


def term(text: str) -> TimeTerm:
    found = parse(text.split(), 0)
    assert found is not None, text
    assert found[1] == len(text.split()), (text, found)  # the whole phrase is one time word
    return found[0]


@pytest.mark.parametrize("text, fixed", [
    ("2015", (2015, None, None)), ("may 2015", (2015, 5, None)), ("2015-05-02", (2015, 5, 2)),
    ("may", (None, 5, None)), ("july 2008", (2008, 7, None)), ("2015-05", (2015, 5, None)),
    ("2015/5/2", (2015, 5, 2)), ("May 2 2015", (2015, 5, 2)), ("2nd May 2015", (2015, 5, 2)),
    ("july 4", (None, 7, 4)), ("4th july", (None, 7, 4)), ("sep 2015", (2015, 9, None)),
    ("sept. 2015", (2015, 9, None)), ("dec 25", (None, 12, 25)), ("feb 29", (None, 2, 29)),
    ("feb 29 2016", (2016, 2, 29)), ("SEPTEMBER", (None, 9, None)),
])
def test_dates_parse(text, fixed):
    t = term(text)
    assert (t.year, t.month, t.day, t.part, t.season) == (*fixed, None, None)
    assert t.words == text.lower()


@pytest.mark.parametrize("text, part", [("night", "night"), ("nights", "night"), ("morning", "morning"),
                                        ("afternoon", "afternoon"), ("Evening", "evening"), ("nighttime", "night")])
def test_parts_of_the_day_parse(text, part):
    assert term(text).part == part


@pytest.mark.parametrize("text, season", [("summer", "summer"), ("winter", "winter"), ("spring", "spring"),
                                          ("autumn", "autumn"), ("fall", "autumn")])
def test_seasons_parse(text, season):
    assert term(text).season == season


@pytest.mark.parametrize("tokens", [["dog"], ["jan"], ["mar"], ["1000"], ["2200"], ["15"], ["2015-13"],
                                    ["2015-02-30"], ["2015-5-2-1"], ["20150502"], [""], ["2nd"], ["31", "june"]])
def test_words_that_are_not_times_do_not_parse(tokens):
    assert parse(tokens, 0) is None


def test_parse_reads_at_token_i_and_says_how_many_it_used():
    tokens = ["dog", "france", "may", "2015", "night"]
    assert parse(tokens, 0) is None and parse(tokens, 1) is None
    t, used = parse(tokens, 2)
    assert (t.year, t.month, used) == (2015, 5, 2)
    t, used = parse(tokens, 4)
    assert (t.part, used) == ("night", 1)
    assert parse(tokens, 5) is None and parse(tokens, -1) is None and parse([], 0) is None
    # a month then a number that is no day nor year: the month alone
    t, used = parse(["may", "40", "cats"], 0)
    assert (t.month, t.day, used) == (5, None, 1)
    # an invalid day is left to the next word: February alone
    t, used = parse(["february", "30", "2015"], 0)
    assert (t.year, t.month, t.day, used) == (None, 2, None, 1)
    # "2015 may": a year, then a month, as two terms (a query combines them)
    assert parse(["2015", "may"], 0)[1] == 1 and parse(["2015", "may"], 1)[0].month == 5


def test_dates_match_a_photos_local_date_with_a_why():
    photo = When("2015-05-02T14:03:09")
    assert term("2015").match(photo) == "'2015': taken 2015-05-02 14:03 (EXIF)"
    assert term("may 2015").match(photo) == "'may 2015': taken 2015-05-02 14:03 (EXIF)"
    assert term("2015-05-02").match(photo) and term("may").match(photo) and term("2nd may").match(photo)
    for other in ("2014", "june 2015", "2015-05-03", "june", "may 2016", "may 3"):
        assert term(other).match(photo) is None, other
    by_file = term("may 2015").match(When("2015-05-02T14:03:09", source="file"))
    assert by_file == "'may 2015': taken 2015-05-02 14:03 (the file's modification time: the photo holds no date)"
    by_video = term("2015").match(When("2015-05-02T14:03:09", source="container"))
    assert by_video == "'2015': taken 2015-05-02 14:03 (the video's creation time, UTC)"
    assert term("2015").match(When("not a time")) is None and term("2015").match(When("")) is None


@pytest.mark.parametrize("hour, part", [(4, "night"), (5, "morning"), (11, "morning"), (12, "afternoon"),
                                        (16, "afternoon"), (17, "evening"), (20, "evening"), (21, "night"),
                                        (0, "night")])
def test_parts_of_the_day_are_local_hours(hour, part):
    taken = f"2015-05-02T{hour:02d}:30:00"
    assert part_of_day(taken) == part
    assert [p for p in PARTS_OF_DAY if term(p).match(When(taken))] == [part]


def test_hour_words_apply_only_to_the_cameras_time():
    assert term("night").match(When("2015-05-02T22:14:00", offset=120)) == (
        "'night': taken at 22:14 local time (UTC+02:00) on 2015-05-02, night is 21:00-05:00")
    assert term("night").match(When("2015-05-02T03:14:00", offset=-210)) == (
        "'night': taken at 03:14 local time (UTC-03:30) on 2015-05-02, night is 21:00-05:00")
    assert "the camera's clock" in term("evening").match(When("2015-05-02T18:00:00"))
    for source in ("file", "container"):
        assert term("night").match(When("2015-05-02T22:14:00", source=source)) is None


def test_seasons_follow_the_hemisphere_of_the_photo():
    january, july = "2016-01-10T12:00:00", "2016-07-10T12:00:00"
    sydney, lyon = -33.87, 45.76
    assert term("summer").match(When(january, lat=sydney)) == (
        "'summer': taken 2016-01-10 (EXIF), summer in the southern hemisphere (latitude -33.9) is December-February")
    assert term("summer").match(When(july, lat=sydney)) is None and term("winter").match(When(july, lat=sydney))
    assert term("summer").match(When(july, lat=lyon)) and term("summer").match(When(january, lat=lyon)) is None
    assert "northern hemisphere, assumed (no position)" in term("winter").match(When(january))
    assert term("fall").match(When("2016-10-01T12:00:00", lat=lyon)) and term("autumn").match(When("2016-04-01T12:00:00", lat=sydney))


def test_terms_describe_themselves_and_give_a_range_of_taken():
    assert term("may 2015").describe() == "May 2015" and term("2015-05-02").describe() == "2 May 2015"
    assert term("may").describe() == "May (any year)" and term("2015").describe() == "2015"
    assert term("night").describe() == "night (21:00-05:00 local time)"
    assert term("summer").describe() == "summer (June-August in the north, December-February in the south)"
    assert term("2015").span() == ("2015-01-01T00:00:00", "2016-01-01T00:00:00")
    assert term("december 2015").span() == ("2015-12-01T00:00:00", "2016-01-01T00:00:00")
    assert term("2016-02-29").span() == ("2016-02-29T00:00:00", "2016-03-01T00:00:00")
    assert term("may").span() is None and term("night").span() is None and term("summer").span() is None


def test_the_words_a_date_gives_parse_back_to_terms_that_match_it():
    taken = "2015-05-02T14:03:09"
    words = date_words(taken)
    assert words == ("2015", "may", "may 2015", "2015-05", "2015-05-02")
    assert all(term(w).match(When(taken)) for w in words)
    assert year_month(taken) == (2015, 5) and year_month(None) is None and date_words("garbage") == ()


def test_a_cameras_exif_date_matches_and_a_file_time_is_local(tmp_path):
    exif = Image.Exif()
    exif.get_ifd(0x8769).update({36867: "2008:07:14 22:40:00", 0x9011: "+02:00"})
    path = tmp_path / "italy.jpg"
    Image.new("RGB", (16, 16)).save(path, exif=exif)
    photo = load_photo(path)
    when = When(photo.taken, "exif", photo.offset)
    assert term("july 2008").match(when) and term("night").match(when) and term("2008").match(when)
    stamp = datetime.datetime(2012, 3, 4, 5, 6, 7).timestamp()
    os.utime(path, (stamp, stamp))
    assert file_time(os.stat(path).st_mtime_ns) == "2012-03-04T05:06:07"
    assert term("march 2012").match(When(file_time(os.stat(path).st_mtime_ns), "file"))
