"""A lean list-view base for statewide tables (millions of rows).

Flask-Admin's stock peewee list does a COUNT over the filtered table on every page and
one query per foreign key per row. LeanListView keeps Flask-Admin's filters, search,
sorting, actions and export, but:
- the page is ONE select: the page's ids chosen on the base table alone (`list_query()`,
  the index does the ordering and the OFFSET skipping), then the joins of `join_page()` for
  those rows only (a "deferred join": page 1000 costs about what page 1 does);
- no unbounded COUNT: the header says "N" for small results, "1,000+" above the cap
  (one capped count: COUNT over at most cap+1 index rows);
- bounded pagination: a simple previous/next pager, OFFSET limited to `max_page` pages,
  ordered on indexed columns with the id as tie-breaker.
So a page costs at most 2 queries of its own (page, capped count).
"""

import datetime as dt
import time

from flask import abort, current_app, flash, g, request
from flask_admin.contrib.peewee.filters import BasePeeweeFilter
from flask_admin.form import BaseForm
from markupsafe import Markup, escape
from wtforms import HiddenField

from admin_views.base import SecureModelView, current_actor
from models import local_zone
from workflow import audit_denial


def local_day_start_utc(day):
    """Midnight of a local calendar day, as the naive UTC the database stores."""
    moment = dt.datetime.combine(day, dt.time(0), tzinfo=local_zone())
    return moment.astimezone(dt.timezone.utc).replace(tzinfo=None)


def _out_of_range(value):
    try:
        return abs(int(str(value).strip())) > 2 ** 63 - 1
    except ValueError:
        return False


OPTION_CACHE_SECONDS = 120
_option_cache = {}


def cached_options(key, build):
    """A filter's choices, built at most every LIST_OPTION_CACHE_SECONDS per process and
    key (e.g. per program): drop-downs over statewide tables are not rebuilt on every page.
    Off under TESTING (each test has its own rows behind the same ids)."""
    seconds = current_app.config.get("LIST_OPTION_CACHE_SECONDS",
                                     0 if current_app.testing else OPTION_CACHE_SECONDS)
    if not seconds:
        return build()
    now = time.monotonic()
    hit = _option_cache.get(key)
    if hit is not None and now - hit[0] < seconds:
        return hit[1]
    value = build()
    if len(_option_cache) > 5000:
        _option_cache.clear()
    _option_cache[key] = (now, value)
    return value


class OptionFilter(BasePeeweeFilter):
    """column == one of the (int id, label) options; options may be a callable."""

    def validate(self, value):
        try:
            int(value)
        except (TypeError, ValueError):
            return False
        return True

    def clean(self, value):
        return int(value)

    def apply(self, query, value):
        return query.where(self.column == value)

    def operation(self):
        return "is"


class DayFilter(BasePeeweeFilter):
    """A datetime column on or after / on or before a local calendar day."""

    def __init__(self, column, name, after=True, **kwargs):
        super().__init__(column, name, **kwargs)
        self.after = after

    def validate(self, value):
        try:
            dt.date.fromisoformat(value)
        except (TypeError, ValueError):
            return False
        return True

    def clean(self, value):
        return dt.date.fromisoformat(value)

    def apply(self, query, value):
        if self.after:
            return query.where(self.column >= local_day_start_utc(value))
        return query.where(self.column < local_day_start_utc(value + dt.timedelta(days=1)))

    def operation(self):
        return "on or after" if self.after else "on or before"


class LeanListView(SecureModelView):
    list_template = "lists/list.html"
    simple_list_pager = True
    can_create = False
    can_edit = False
    can_delete = False
    can_view_details = False
    can_set_page_size = False
    column_display_actions = False
    count_cap = 1000
    max_page = 2000
    default_sort = ()  # ((field, desc), ...) on indexed columns; the id breaks ties

    def __init__(self, *args, **kwargs):
        self._options_html = {}
        super().__init__(*args, **kwargs)

    # -- the query -------------------------------------------------------------------
    def list_query(self):
        """The rows of the list, unjoined (search and filters apply to it): visible_query()."""
        return self.visible_query()

    def join_page(self, query):
        """The joined select that shows the page's rows (one query, no N+1)."""
        return query

    def apply_search(self, query, search):
        return query

    def apply_defaults(self, query, filters):
        """Restrictions that apply when the user chose no filter of that kind."""
        return query

    def page_query(self, page=0, sort_column=None, sort_desc=False, search=None, filters=(),
                   page_size=None):
        """The query of one page (no execution): what benchmarks time. The ids of the page
        come from the filtered base table by its index; the joins run for those ids only."""
        order = self.sort_order(sort_column, sort_desc)
        ids = self.filtered_query(search, filters).select(self.model.id).order_by(*order)
        page_size = self.page_size if page_size is None else page_size
        page = max(0, min(int(page or 0), self.max_page))
        if page_size:
            ids = ids.limit(page_size).offset(page * page_size)
        # A derived table, not `id IN (...)`: PostgreSQL plans IN as a semi-join and may
        # scan the joined tables whole; a LIMITed derived table runs first, 25 rows.
        page_ids = ids.alias("page_ids")
        query = (self.model.select().join(page_ids, on=(self.model.id == page_ids.c.id))
                 .switch(self.model))
        return self.join_page(query).order_by(*order)

    def filtered_query(self, search=None, filters=()):
        query = self.list_query()
        if search:
            query = self.apply_search(query, search)
        for index, _name, value in filters or ():
            flt = self._filters[index]
            query = flt.apply(query, flt.clean(value))
        return self.apply_defaults(query, filters or ())

    def sort_order(self, sort_column, sort_desc):
        """ORDER BY clauses on indexed columns, the id breaking ties the same way."""
        if sort_column is not None and sort_column in self._sortable_columns:
            field = self._sortable_columns[sort_column]
            order = [(field, bool(sort_desc))]
        else:
            order = list(self.default_sort)
        clauses = [f.desc() if desc else f.asc() for f, desc in order]
        last_desc = order[-1][1] if order else True
        clauses.append(self.model.id.desc() if last_desc else self.model.id.asc())
        return clauses

    def apply_order(self, query, sort_column, sort_desc):
        return query.order_by(*self.sort_order(sort_column, sort_desc))

    def capped_count(self, search=None, filters=()):
        """The number of matching rows up to count_cap, in one bounded query on the base
        table (no joins): COUNT over at most count_cap + 1 index entries."""
        inner = (self.filtered_query(search, filters).select(self.model.id).order_by()
                 .limit(self.count_cap + 1))
        return inner.count()

    def count_label(self, count):
        if count > self.count_cap:
            return f"{self.count_cap:,}+"
        return f"{count:,}"

    def options_html(self, flt, options, selected):
        """The <option>s of a filter's drop-down, the current value selected. The choices
        may run to hundreds (agencies): rendered once per (cached) choices list."""
        hit = self._options_html.get(flt)
        if hit is None or hit[0] is not options:
            html = "".join(f'<option value="{escape(v)}">{escape(label)}</option>'
                           for v, label in options)
            hit = (options, html)
            self._options_html[flt] = hit
        html = hit[1]
        if selected not in (None, ""):
            mark = f'<option value="{escape(selected)}">'
            html = html.replace(mark, mark[:-1] + " selected>", 1)
        return Markup(html)

    # -- Flask-Admin hooks ---------------------------------------------------------------
    def get_list(self, page, sort_column, sort_desc, search, filters, execute=True,
                 page_size=None):
        query = self.page_query(page, sort_column, sort_desc, search, filters,
                                page_size=page_size)
        if not execute:
            return None, query
        g.list_count_label = self.count_label(self.capped_count(search, filters))
        return None, list(query)

    def _get_list_filter_args(self):
        """Flask-Admin's, but an empty value (a filter left at "Any") is no filter."""
        if not self._filters:
            return None
        found = []
        for arg, value in request.args.items():
            if not arg.startswith("flt") or "_" not in arg or value == "":
                continue
            pos, key = arg[3:].split("_", 1)
            if key in self._filter_args:
                index, flt = self._filter_args[key]
                # A number beyond 64 bits made the database driver raise (a 500; security
                # battery, item 9): refused like any other invalid value.
                if flt.validate(value) and not _out_of_range(value):
                    found.append((pos, (index, flt.name, value)))
                else:
                    flash(f"Ignored an invalid value for the filter “{flt.name}”.", "error")
        return [item for _pos, item in sorted(found, key=lambda pair: pair[0])]

    def get_action_form(self):
        """The app-wide CSRFProtect checks the form's csrf_token (templates add it); a
        second, Flask-Admin session token on the same field name would never match."""

        class ActionForm(BaseForm):
            action = HiddenField()
            url = HiddenField()

        return ActionForm

    def deny_ids(self, ids, action):
        """Ids from the browser that the user may not see: audited, then 404 (R-SAFE-2)."""
        wanted = {str(i) for i in ids}
        found = self._ids(ids)
        if len(found) != len(wanted):
            audit_denial(current_actor(), action, detail=f"ids {','.join(sorted(wanted))[:200]}")
            abort(404)
        return found
