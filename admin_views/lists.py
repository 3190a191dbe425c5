"""A lean list-view base for statewide tables (millions of rows).

Flask-Admin's stock peewee list does a COUNT over the filtered table on every page and
one query per foreign key per row. LeanListView keeps Flask-Admin's filters, search,
sorting, actions and export, but a page is ONE select (issue 6):
- the page's ids are chosen on the base table alone (`list_query()`: the index does the
  ordering), then the joins of `join_page()` run for those rows only (a "deferred join");
- keyset pagination: "Next" and "Previous" carry the boundary row's (sort value, id), so
  page 1000 reads the same 26 index entries as page 1 (no OFFSET); a page number typed
  in the address still works, bounded by `max_page`;
- no unbounded COUNT: the header says "N" for small results, "1,000+" above the cap —
  a capped count (COUNT over at most cap+1 index entries) computed by the same select as
  a scalar subquery;
- `disclose()` audits the clients shown with one multi-row INSERT (R-SAFE-1: every read
  of client data), so with the sign-in gate's single query a page costs 3 statements.
"""

import datetime as dt
import time
from urllib.parse import urlencode

from flask import abort, current_app, flash, g, request
from flask_admin.contrib.peewee.filters import BasePeeweeFilter
from flask_admin.form import BaseForm
from markupsafe import Markup, escape
from peewee import SQL, DateTimeField, Tuple, fn
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
    keyset_fields = ()  # names of sortable fields never NULL in this list (cursor pages)

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
                   page_size=None, cursor=None):
        """The query of one page (no execution): what benchmarks time. The ids of the page
        come from the filtered base table by its index — after or before the `cursor`
        (direction, sort value, id) when given, else by OFFSET — and the joins run for those
        ids only. One row more than the page is asked for: it tells whether there is a next
        (or, walking back, a previous) page. Every row carries the capped count as
        `list_total`."""
        order = self.sort_order(sort_column, sort_desc)
        page_size = self.page_size if page_size is None else page_size
        filtered = self.filtered_query(search, filters)
        ids = filtered.select(self.model.id)
        if cursor is not None:
            direction, value, key = cursor
            field, desc = self.sort_fields(sort_column, sort_desc)[0]
            forward = direction == "after"
            if field is self.model.id:
                left, right = self.model.id, key
            else:
                left, right = Tuple(field, self.model.id), Tuple(value, key)
            older = desc == forward  # descending lists go on to smaller values
            ids = ids.where(left < right if older else left > right)
            if not forward:
                order = [c.node.desc() if c.direction == "ASC" else c.node.asc() for c in order]
        elif page_size and page:  # page 1 has no OFFSET (PostgreSQL plans it better)
            page = max(0, min(int(page), self.max_page))
            ids = ids.offset(page * page_size)
        ids = ids.order_by(*order)
        if page_size:
            ids = ids.limit(page_size + 1)
        # A derived table, not `id IN (...)`: PostgreSQL plans IN as a semi-join and may
        # scan the joined tables whole; a LIMITed derived table runs first, 26 rows.
        page_ids = ids.alias("page_ids")
        query = (self.model.select().join(page_ids, on=(self.model.id == page_ids.c.id))
                 .switch(self.model))
        total = self.capped_count_query(filtered).alias("list_total")
        return self.join_page(query).select_extend(total).order_by(*order)

    def filtered_query(self, search=None, filters=()):
        query = self.list_query()
        if search:
            query = self.apply_search(query, search)
        for index, _name, value in filters or ():
            flt = self._filters[index]
            query = flt.apply(query, flt.clean(value))
        return self.apply_defaults(query, filters or ())

    def sort_fields(self, sort_column, sort_desc):
        """[(field, descending)]: the chosen sortable column, else default_sort."""
        if sort_column is not None and sort_column in self._sortable_columns:
            return [(self._sortable_columns[sort_column], bool(sort_desc))]
        return list(self.default_sort) or [(self.model.id, True)]

    def sort_order(self, sort_column, sort_desc):
        """ORDER BY clauses on indexed columns, the id breaking ties the same way."""
        order = self.sort_fields(sort_column, sort_desc)
        clauses = [f.desc() if desc else f.asc() for f, desc in order
                   if f is not self.model.id]
        last_desc = order[-1][1]
        clauses.append(self.model.id.desc() if last_desc else self.model.id.asc())
        return clauses

    def apply_order(self, query, sort_column, sort_desc):
        return query.order_by(*self.sort_order(sort_column, sort_desc))

    # -- keyset pagination ---------------------------------------------------------------
    def keyset_field(self, sort_column, sort_desc):
        """The leading sort field when pages can go by cursor: a single sort field that is
        never NULL in this list (`keyset_fields`), or the id; else None (OFFSET pages)."""
        fields = self.sort_fields(sort_column, sort_desc)
        field = fields[0][0]
        if len(fields) == 1 and (field is self.model.id or field.name in self.keyset_fields):
            return field
        return None

    def parse_cursor(self, sort_column, sort_desc):
        """("after"|"before", value, id) from the address, or None. A malformed cursor is
        said and ignored (the first page is shown)."""
        for direction in ("after", "before"):
            raw = request.args.get(direction)
            if not raw:
                continue
            field = self.keyset_field(sort_column, sort_desc)
            try:
                value, key = raw.rsplit("_", 1)
                key = int(key)
                if field is None or _out_of_range(key):
                    raise ValueError(raw)
                if field is self.model.id:
                    value = key
                elif isinstance(field, DateTimeField):
                    value = dt.datetime.fromisoformat(value)
                return direction, value, key
            except ValueError:
                flash("Ignored an invalid page position; showing the first page.", "error")
                return None
        return None

    def cursor_of(self, row, field):
        value = getattr(row, field.name)
        if value is None:
            return None
        text = value.isoformat() if isinstance(value, dt.datetime) else str(value)
        return f"{text}_{row.id}"

    def pager(self, rows, page, page_size, sort_column, sort_desc, cursor):
        """Trims the extra row and says where Previous and Next lead (template: g.list_pager)."""
        more = bool(page_size) and len(rows) > page_size
        if more:
            rows = rows[:page_size]
        backwards = cursor is not None and cursor[0] == "before"
        if backwards:
            rows.reverse()
        has_prev = more if backwards else (cursor is not None or page > 0)
        has_next = (cursor is not None or more) if backwards else more
        field = self.keyset_field(sort_column, sort_desc) if rows else None

        def link(target, direction, row):
            """Page `target`, by cursor when the sort allows it (page 1 needs none)."""
            position = self.cursor_of(row, field) if field is not None and target else None
            return {"page": target, direction: position} if position else {"page": target}

        links = {"page": page, "prev": None, "next": None}
        if has_prev and page > 0:
            links["prev"] = link(page - 1, "before", rows[0] if rows else None)
        if has_next and (field is not None or page < self.max_page):
            links["next"] = link(page + 1, "after", rows[-1] if rows else None)
        return rows, links

    def pager_href(self, link):
        """The address of a pager link: the list's own arguments, the page and cursor."""
        args = [(k, v) for k, v in request.args.items(multi=True)
                if k not in ("page", "after", "before")]
        if link.get("page"):
            args.append(("page", link["page"]))
        args += [(k, link[k]) for k in ("after", "before") if k in link]
        return request.path + ("?" + urlencode(args) if args else "")

    def capped_count_query(self, filtered):
        """The number of matching rows up to count_cap, on the base table (no joins):
        COUNT over at most count_cap + 1 index entries."""
        return (filtered.select(SQL("1")).order_by().limit(self.count_cap + 1)
                .select_from(fn.COUNT(SQL("*"))))

    def capped_count(self, search=None, filters=()):
        return self.capped_count_query(self.filtered_query(search, filters)).scalar()

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

    def disclose(self, rows, exporting=False):
        """What the page may show of these rows, and their audit rows (R-SAFE-1: one per
        client shown): nothing to do by default."""

    # -- Flask-Admin hooks ---------------------------------------------------------------
    def get_list(self, page, sort_column, sort_desc, search, filters, execute=True,
                 page_size=None):
        exporting = request.endpoint == f"{self.endpoint}.export"  # every row, no pager
        cursor = None if exporting else self.parse_cursor(sort_column, sort_desc)
        query = self.page_query(page, sort_column, sort_desc, search, filters,
                                page_size=page_size, cursor=cursor)
        if not execute:
            return None, query
        rows = list(query)
        total = rows[0].list_total if rows else (
            0 if cursor is None and not page else self.capped_count(search, filters))
        g.list_count_label = self.count_label(total)
        if not exporting:
            rows, g.list_pager = self.pager(rows, page or 0, self.page_size if page_size is None
                                            else page_size, sort_column, sort_desc, cursor)
        elif page_size and len(rows) > page_size:
            rows = rows[:page_size]
        if rows:
            self.disclose(rows, exporting)
        return None, rows

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
