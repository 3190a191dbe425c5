"""The public resource directory and map, and the team locator (R-NET-2, R-NET-4).

No sign-in. Only programs with a valid Agency MOU; never client data, never user names
(except the designated administrators on the team locator, who are staff contacts meant
to be reached by the public). Answers are cached in memory (reporting.directory_programs)
and, for anonymous visitors, by browsers and proxies for five minutes.
"""

from flask import abort, current_app, request
from flask_login import current_user

import reporting
from admin_views.base import SecureBaseView, expose
from forms.reports import ProgramFilterForm

PUBLIC_MAX_AGE = 300


def cacheable(response):
    """Shared caches may keep anonymous pages; a signed-in page shows the user's name."""
    if current_user.is_authenticated:
        response.headers["Cache-Control"] = "private, no-store"
    else:
        response.headers["Cache-Control"] = f"public, max-age={PUBLIC_MAX_AGE}"
    response.headers["Vary"] = "Cookie"
    return response


class DirectoryView(SecureBaseView):
    public = True

    def render_public(self, template, **context):
        response = current_app.make_response(self.render(template, **context))
        return cacheable(response)

    @expose("/")
    def index(self):
        form = ProgramFilterForm(request.args).fill(reporting.cached_filter_choices())
        programs = reporting.directory_programs(request.args) if form.validate() else []
        located = [p for p in programs if p["latitude"] is not None and p["longitude"] is not None]
        return self.render_public("public/directory.html", form=form, programs=programs,
                                  located=located, tile_url=current_app.config["TILE_URL"])

    @expose("/program/<int:program_id>")
    def program(self, program_id):
        program = reporting.directory_program(program_id)
        if program is None:
            abort(404)
        return self.render_public("public/program.html", p=program)

    @expose("/team")
    def team(self):
        return self.render_public("public/team.html", team=reporting.team_locator())


def register(admin):
    admin.add_view(DirectoryView(name="Resource Directory", endpoint="public", url="/directory"))
