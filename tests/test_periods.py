import datetime as dt

import pytest

from timevec.periods import Period, PeriodError, period_range, sort_periods


def test_parse_and_format_round_trip():
    assert str(Period.parse("2014")) == "2014"
    assert str(Period.parse("2014-03")) == "2014-03"
    assert Period.parse(2014) == Period(2014)
    assert Period.parse("2014-03").granularity == "month"
    assert Period.parse("2014").granularity == "year"


@pytest.mark.parametrize("bad", ["14", "2014-3", "2014-13", "2014-00", "../x", "2014/03", "", "2014-03-01", "abcd", None])
def test_bad_strings_are_refused_with_the_value_named(bad):
    with pytest.raises(PeriodError) as err:
        Period.parse(bad)
    assert repr(bad) in str(err.value)  # the value itself, quoted: '' is named as '' (a bare str('') is in every string)


def test_order_distance_and_shift():
    assert Period.parse("2013-12") < Period.parse("2014-01")
    assert Period.parse("2014") < Period.parse("2014-01")  # a year sorts before its months
    assert Period.parse("2012").distance("2017") == 5
    assert Period.parse("2017").distance("2012") == -5
    assert Period.parse("2013-11").distance("2014-02") == 3
    assert Period.parse("2013-11").shift(3) == Period.parse("2014-02")
    assert Period.parse("2014-01").shift(-1) == Period.parse("2013-12")
    with pytest.raises(PeriodError, match="a year and a month"):
        Period.parse("2014").distance("2014-01")


def test_month_of_year_and_contains():
    assert Period.parse("2016-07").month_of_year == 7
    with pytest.raises(PeriodError):
        _ = Period.parse("2016").month_of_year
    assert Period.parse("2016").contains("2016-07")
    assert not Period.parse("2016-06").contains("2016-07")


def test_ranges():
    assert [str(p) for p in period_range("2012", "2014")] == ["2012", "2013", "2014"]
    months = period_range("2013-11", "2014-02")
    assert [str(p) for p in months] == ["2013-11", "2013-12", "2014-01", "2014-02"]
    with pytest.raises(PeriodError, match="empty"):
        period_range("2015", "2014")
    with pytest.raises(PeriodError, match="mixes"):
        period_range("2014", "2015-01")


def test_of_date_and_sort():
    assert Period.of_date(dt.date(2015, 4, 30), "month") == Period(2015, 4)
    assert Period.of_date(dt.datetime(2015, 4, 30, 23), "year") == Period(2015)
    assert sort_periods(["2015-02", "2014-12", "2015-01"]) == ["2014-12", "2015-01", "2015-02"]
