import datetime as dt

import pytest

from timevec.periods import (
    CYCLE,
    GRANULARITIES,
    Period,
    PeriodError,
    check_granularity,
    iso_weeks,
    period_midpoint,
    period_range,
    sort_periods,
    steps_between,
)


def test_parse_and_format_round_trip():
    assert str(Period.parse("2014")) == "2014"
    assert str(Period.parse("2014-03")) == "2014-03"
    assert Period.parse(2014) == Period(2014)
    assert Period.parse("2014-03").granularity == "month"
    assert Period.parse("2014").granularity == "year"


@pytest.mark.parametrize("bad", ["14", "2014-3", "2014-13", "2014-00", "../x", "2014/03", "", "2014-03-1", "abcd", None,
                                 # the finer granularities of issue 39 ("2014-03-01" is a day now)
                                 "2014-Q0", "2014-Q5", "2014-q1", "2014-Q01", "2014-W00", "2014-W53", "2014-W1", "2014-w01",
                                 "2014-W54", "2017-02-29", "2014-04-31", "2014-13-01", "2014-03-00", "2014-03-09T00",
                                 "2014-W10-1", "2014-Q1-01"])
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


# ---- quarter, ISO week and day (issue 39) ----------------------------------------------------------------------


@pytest.mark.parametrize("text, granularity", [("2014-Q1", "quarter"), ("2014-Q4", "quarter"), ("2015-W01", "week"),
                                               ("2015-W53", "week"), ("2014-03-09", "day"), ("2016-02-29", "day")])
def test_finer_periods_round_trip(text, granularity):
    period = Period.parse(text)
    assert str(period) == text and period.granularity == granularity
    assert Period.parse(f"  {text} ") == period and repr(period) == f"Period({text!r})"


def test_iso_week_53_exists_only_in_53_week_years():
    assert [y for y in range(2009, 2027) if iso_weeks(y) == 53] == [2009, 2015, 2020, 2026]
    assert Period.parse("2015-W53").end() == dt.date(2016, 1, 3)  # a Sunday in the next calendar year
    with pytest.raises(PeriodError, match=r"'2014-W53'.*ISO year 2014 has 52 weeks"):
        Period.parse("2014-W53")
    assert Period.parse("2015-W53").shift(1) == Period.parse("2016-W01")
    assert Period.parse("2016-W01").shift(-1) == Period.parse("2015-W53")
    assert Period.parse("2014-W52").shift(1) == Period.parse("2015-W01")
    assert Period.parse("2015-W01").start() == dt.date(2014, 12, 29)  # ISO week 1 holds the year's first Thursday
    # the ISO year, not the calendar year: 2016-01-01 (a Friday) is in 2015's week 53, 2014-12-29 in 2015's week 1
    assert Period.of_date(dt.date(2016, 1, 1), "week") == Period.parse("2015-W53")
    assert Period.of_date(dt.date(2014, 12, 29), "week") == Period.parse("2015-W01")
    assert Period.of_date(dt.datetime(2016, 1, 4, 23, 59), "week") == Period.parse("2016-W01")
    assert steps_between("2015-W01", "2016-W01") == 53 and steps_between("2016-W01", "2017-W01") == 52
    weeks = period_range("2015-W52", "2016-W02")
    assert [str(p) for p in weeks] == ["2015-W52", "2015-W53", "2016-W01", "2016-W02"]


def test_leap_days():
    assert Period.parse("2016-02-29").shift(1) == Period.parse("2016-03-01")
    assert Period.parse("2016-02-28").shift(1) == Period.parse("2016-02-29")
    assert Period.parse("2017-02-28").shift(1) == Period.parse("2017-03-01")
    with pytest.raises(PeriodError, match=r"'2017-02-29'.*not a leap year"):
        Period.parse("2017-02-29")
    assert len(period_range("2016-01-01", "2016-12-31")) == 366 and len(period_range("2017-01-01", "2017-12-31")) == 365
    assert steps_between("2016-02-28", "2016-03-01") == 2 and steps_between("2017-02-28", "2017-03-01") == 1
    assert Period.parse("2016-02").end() == dt.date(2016, 2, 29) and Period.parse("2017-02").end() == dt.date(2017, 2, 28)


def test_quarter_boundaries():
    assert Period.parse("2016-Q4").shift(1) == Period.parse("2017-Q1")
    assert Period.parse("2017-Q1").shift(-1) == Period.parse("2016-Q4")
    assert steps_between("2015-Q3", "2017-Q1") == 6
    assert Period.parse("2016-Q1").contains(dt.date(2016, 3, 31)) and not Period.parse("2016-Q1").contains(dt.date(2016, 4, 1))
    assert Period.parse("2016-Q2").contains(dt.date(2016, 4, 1))
    assert Period.of_date(dt.date(2016, 3, 31), "quarter") == Period.parse("2016-Q1")
    assert Period.of_date(dt.date(2016, 4, 1), "quarter") == Period.parse("2016-Q2")
    assert (Period.parse("2016-Q4").start(), Period.parse("2016-Q4").end()) == (dt.date(2016, 10, 1), dt.date(2016, 12, 31))
    assert [str(p) for p in period_range("2016-Q3", "2017-Q2")] == ["2016-Q3", "2016-Q4", "2017-Q1", "2017-Q2"]


def test_every_date_lies_in_the_period_of_it_at_every_granularity():
    """of_date, contains, start and end agree for every day of three years (a 53-week ISO year among them)."""
    day = dt.date(2015, 1, 1)
    while day < dt.date(2018, 1, 1):
        for granularity in GRANULARITIES:
            period = Period.of_date(day, granularity)
            assert period.contains(day) and period.start() <= day <= period.end(), (day, granularity)
            assert Period.parse(str(period)) == period and period.granularity == granularity
            assert not period.shift(1).contains(day) and not period.shift(-1).contains(day)
            assert period.shift(1).start() == period.end() + dt.timedelta(days=1)
        day += dt.timedelta(days=1)


def test_containment_of_periods():
    assert Period.parse("2016").contains("2016-Q3") and Period.parse("2016").contains("2016-02-29")
    assert Period.parse("2016-Q1").contains("2016-03") and not Period.parse("2016-Q1").contains("2016-04")
    assert Period.parse("2016-03").contains("2016-03-31") and not Period.parse("2016-03-31").contains("2016-03")
    assert Period.parse("2016").contains("2016-W10") and not Period.parse("2016").contains("2015-W53")  # 2015-12-28..2016-01-03
    assert Period.parse("2016-W01").contains("2016-01-04") and not Period.parse("2016-W01").contains("2016-01-03")


def test_order_across_granularities_is_by_start_coarsest_first():
    mixed = ["2014-W10", "2014-03-01", "2014-03", "2014-Q1", "2014", "2013-12", "2015-W01", "2014-12-28"]
    # 2014-W10 starts on Monday 2014-03-03; 2015-W01 on 2014-12-29
    assert sort_periods(mixed) == ["2013-12", "2014", "2014-Q1", "2014-03", "2014-03-01", "2014-W10", "2014-12-28",
                                   "2015-W01"]


@pytest.mark.parametrize("a, b", [("2014-W10", "2014-03"), ("2014-Q1", "2014"), ("2014-03-09", "2014-W10"),
                                  ("2014-Q1", "2014-01")])
def test_a_mixed_granularity_is_refused_by_name(a, b):
    ga, gb = Period.parse(a).granularity, Period.parse(b).granularity
    with pytest.raises(PeriodError, match=f"a {ga} and a {gb}"):
        Period.parse(a).distance(b)
    with pytest.raises(PeriodError, match=f"mixes a {ga} and a {gb}"):
        period_range(a, b)
    with pytest.raises(PeriodError, match=f"a {ga} and a {gb}"):
        steps_between(a, b)


def test_an_unknown_granularity_is_refused_by_name():
    assert [check_granularity(g) for g in GRANULARITIES] == ["year", "quarter", "month", "week", "day"]
    for name in ("fortnight", "Week", "", None):
        with pytest.raises(PeriodError, match=f"unknown granularity {name!r}"):
            check_granularity(name)
    with pytest.raises(PeriodError, match="unknown granularity 'fortnight'"):
        Period.of_date(dt.date(2016, 1, 1), "fortnight")  # type: ignore[arg-type]
    with pytest.raises(PeriodError, match="unknown granularity 'decade'"):
        Period.first_of_year(2016, "decade")  # type: ignore[arg-type]


def test_first_and_last_of_a_year_and_the_cycles():
    firsts = [str(Period.first_of_year(2015, g)) for g in GRANULARITIES]
    lasts = [str(Period.last_of_year(2015, g)) for g in GRANULARITIES]
    assert firsts == ["2015", "2015-Q1", "2015-01", "2015-W01", "2015-01-01"]
    assert lasts == ["2015", "2015-Q4", "2015-12", "2015-W53", "2015-12-31"]
    assert str(Period.last_of_year(2016, "week")) == "2016-W52"
    assert CYCLE == {"year": None, "quarter": 4, "month": 12, "week": 52, "day": 7}
    assert [Period.parse(p).in_cycle for p in ("2016-Q3", "2016-07", "2016-W05", "2015-W53", "2016-03-09")] == [2, 6, 4, 52, 2]
    with pytest.raises(PeriodError, match="a year has no cycle"):
        _ = Period.parse("2016").in_cycle
    with pytest.raises(PeriodError, match="is a week and has no month of year"):
        _ = Period.parse("2016-W05").month_of_year


def test_midpoints_of_the_finer_periods():
    assert period_midpoint("2014") == 2014.5
    assert period_midpoint("2014-07-02") == pytest.approx(2014 + 182.5 / 365)  # the middle of 2 July 2014
    assert period_midpoint("2014-Q1") == pytest.approx(2014 + 45 / 365)
    assert period_midpoint("2015-W53") == pytest.approx((2015 + 361 / 365 + 2016 + 4 / 366) / 2)
