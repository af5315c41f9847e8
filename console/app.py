"""The console's web application (Flask and Jinja2 templates): sign-in with recsvc's API keys,
two roles, CSRF on every form, and one route per page. Pages are server-rendered; views.py
gathers their data from the serving core, so the console shows what the service serves.

Roles: an analyst key reads and exports; an admin key also forgets customers, rolls back models
and creates campaigns. A client key (a shop frontend's) cannot sign in. Without keys configured
the console binds to loopback only (server.py) and everyone is admin.
"""

from __future__ import annotations

import io
import logging
import secrets
import time
from collections.abc import Callable
from functools import wraps
from typing import Any

import pyarrow.csv as pa_csv
from flask import (
    Flask,
    Response,
    abort,
    flash,
    g,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from flask_wtf.csrf import CSRFError, CSRFProtect

from recsvc.access import ApiKeys
from recsvc.console import views
from recsvc.console.state import ConsoleState
from recsvc.errors import InvalidArgument, NotFound, Unavailable
from recsvc.serving.values import NO_FILTERS, Filters

log = logging.getLogger("recsvc.console")
CONSOLE_ROLES = ("analyst", "admin")  # client keys are a frontend's: no sign-in
NO_KEYS_ROLE = "admin"  # loopback only, and said on every page


def create_app(
    state: ConsoleState,
    keys: ApiKeys | None,
    *,
    secure_cookies: bool = False,
    metrics_url: str = "",
) -> Flask:
    app = Flask(__name__)
    app.config.update(
        SECRET_KEY=secrets.token_bytes(32),  # sessions end with the process: sign in again
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Strict",
        SESSION_COOKIE_SECURE=secure_cookies,
        SESSION_COOKIE_NAME="recsvc_console",
        PERMANENT_SESSION_LIFETIME=8 * 3600,
        WTF_CSRF_TIME_LIMIT=None,  # tied to the session instead
        WTF_CSRF_SSL_STRICT=secure_cookies,
        MAX_CONTENT_LENGTH=1 << 20,
    )
    CSRFProtect(app)
    app.jinja_env.filters["timestamp"] = lambda seconds: time.strftime(
        "%Y-%m-%d %H:%M UTC", time.gmtime(seconds)
    )

    def role() -> str | None:
        if keys is None:
            return NO_KEYS_ROLE
        return session.get("role")

    @app.before_request
    def start() -> Any:
        g.started = time.perf_counter()
        if request.endpoint in ("sign_in", "static"):
            return None
        if role() is None:
            return redirect(url_for("sign_in"))
        try:
            state.follow_current()
        except Unavailable as error:
            log.warning("console: %s", error)
        return None

    @app.after_request
    def finish(response: Response) -> Response:
        # Path only, never the query: customer ids travel in queries and stay out of logs.
        elapsed = (time.perf_counter() - g.get("started", time.perf_counter())) * 1000
        log.info("%s %s %d %.1f ms", request.method, request.path, response.status_code, elapsed)
        response.headers["Server-Timing"] = f"app;dur={elapsed:.1f}"
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "same-origin"
        response.headers["Content-Security-Policy"] = (
            "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:"
        )
        response.headers.setdefault("Cache-Control", "no-store")
        return response

    @app.context_processor
    def common() -> dict[str, Any]:
        return {"role": role(), "signed_in": keys is not None and role() is not None}

    def admin_only(view: Callable[..., Any]) -> Callable[..., Any]:
        @wraps(view)
        def checked(*args: Any, **kwargs: Any) -> Any:
            if role() != "admin":
                abort(403, "This needs an admin key: analysts read and export, admins change.")
            return view(*args, **kwargs)

        return checked

    def page(template: str, section: str, title: str, **values: Any) -> str:
        return render_template(template, section=section, title=title, **values)

    @app.errorhandler(403)
    def forbidden(error: Any) -> tuple[str, int]:
        return page("error.html", "", "Not allowed", code=403, message=error.description), 403

    @app.errorhandler(404)
    def missing(error: Any) -> tuple[str, int]:
        return page("error.html", "", "Not found", code=404, message=error.description), 404

    @app.errorhandler(Unavailable)
    def unavailable(error: Unavailable) -> tuple[str, int]:
        message = f"{error} Nothing was changed; try again in a moment."
        return page("error.html", "", "Unavailable", code=503, message=message), 503

    @app.errorhandler(CSRFError)
    def csrf_failed(error: CSRFError) -> tuple[str, int]:
        message = f"The form expired or did not come from this console ({error.description})."
        return page("error.html", "", "Refused", code=400, message=message), 400

    @app.route("/sign-in", methods=["GET", "POST"])
    def sign_in() -> Any:
        if keys is None:
            return redirect(url_for("overview"))
        if request.method == "POST":
            found = keys.role_of(request.form.get("key", "").strip())
            if found in CONSOLE_ROLES:
                session.clear()
                session["role"] = found
                session.permanent = True
                return redirect(url_for("overview"))
            flash(
                "That key is not an analyst's or an admin's key." if found else "Unknown key.",
                "error",
            )
            return page("sign_in.html", "", "Sign in"), 401
        return page("sign_in.html", "", "Sign in")

    @app.post("/sign-out")
    def sign_out() -> Any:
        session.clear()
        return redirect(url_for("sign_in"))

    @app.get("/")
    def overview() -> str:
        return page("overview.html", "overview", "Overview", **views.overview(state, metrics_url))

    @app.get("/customers")
    def customer() -> str:
        user_id = request.args.get("user_id", "").strip()
        if not user_id:
            return page("customer.html", "customer", "Customers", found=None, form=request.args)
        try:
            filters = _filters(request.args)
            found = views.customer(
                state, user_id, filters, bool(request.args.get("exclude_purchased"))
            )
        except (InvalidArgument, ValueError) as error:
            flash(str(error), "error")
            found = None
        return page(
            "customer.html", "customer", f"Customer {user_id}", found=found, form=request.args
        )

    @app.post("/customers/forget")
    @admin_only
    def forget() -> Any:
        user_id = request.form.get("user_id", "")
        if request.form.get("confirm", "") != user_id or not user_id:
            flash("Type the customer's id to confirm the deletion.", "error")
            return redirect(url_for("customer", user_id=user_id))
        deleted = state.core.forget_user(user_id, "operator console")
        state.forget_cached()
        flash(f"Forgotten: {deleted:,} stored events deleted; never personalised again.", "info")
        return redirect(url_for("customer"))

    @app.get("/items")
    def item() -> str:
        item_id = request.args.get("item_id", "").strip()
        found = None
        if item_id:
            try:
                found = views.item(state, item_id)
            except (NotFound, InvalidArgument) as error:
                flash(str(error), "error")
        return page("item.html", "item", f"Item {item_id}" if item_id else "Items", found=found)

    @app.get("/segments")
    def segments() -> str:
        return page("segments.html", "segments", "Segments", **views.segments(state))

    @app.get("/segments/<segment_id>")
    def segment(segment_id: str) -> str:
        try:
            number = max(0, int(request.args.get("page", "0")))
            found = views.segment(state, segment_id, number)
        except NotFound as error:
            abort(404, str(error))
        except ValueError:
            abort(404, "no such page")
        return page("segment.html", "segments", f"Segment {segment_id}", **found)

    def campaigns_page(preview: dict[str, Any] | None, form: Any) -> str:
        return page(
            "campaigns.html",
            "campaigns",
            "Campaigns",
            campaigns=state.core.campaigns(),
            segments=state.core.list_segments(),
            channels=[c.name for c in state.config.campaigns.channels],
            stages=views.STAGES,
            preview=preview,
            form=form,
        )

    @app.get("/campaigns")
    def campaigns() -> str:
        return campaigns_page(None, {})

    @app.post("/campaigns/preview")
    def campaign_preview() -> str:
        """Size and a sample of the audience before anything is stored (analysts too)."""
        preview = None
        try:
            spec = views.campaign_spec(request.form)
            preview = views.campaign_preview(state.core.plan_campaign(spec))
        except (InvalidArgument, NotFound, ValueError) as error:
            flash(str(error), "error")
        return campaigns_page(preview, request.form)

    @app.post("/campaigns")
    @admin_only
    def campaign_create() -> Any:
        try:
            created = state.core.create_campaign(views.campaign_spec(request.form))
        except (InvalidArgument, NotFound, ValueError) as error:
            flash(str(error), "error")
            return redirect(url_for("campaigns"))
        flash(
            f"Campaign {created.name} created: {len(created.treatment):,} to reach, "
            f"{len(created.members) - len(created.treatment):,} held out as control.",
            "info",
        )
        return redirect(url_for("campaign", name=created.name))

    @app.get("/campaigns/<name>")
    def campaign(name: str) -> str:
        try:
            found = views.campaign_result(state, name)
        except (NotFound, InvalidArgument) as error:
            abort(404, str(error))
        return page("campaign.html", "campaigns", f"Campaign {name}", **found)

    @app.get("/campaigns/<name>/treatment.csv")
    def campaign_export(name: str) -> Response:
        try:
            table = state.core.campaign_treatment(name)
        except (NotFound, InvalidArgument) as error:
            abort(404, str(error))
        buffer = io.BytesIO()
        pa_csv.write_csv(table, buffer)
        return Response(
            buffer.getvalue(),
            mimetype="text/csv",
            headers={"Content-Disposition": f'attachment; filename="{name}-treatment.csv"'},
        )

    @app.get("/experiments")
    def experiments() -> str:
        return page(
            "experiments.html",
            "experiments",
            "Experiments",
            results=views.experiments(state),
            configured=state.config.experiments,
        )

    @app.get("/models")
    def models() -> str:
        return page("models.html", "models", "Models", versions=views.versions(state))

    @app.post("/models/rollback")
    @admin_only
    def rollback() -> Any:
        version = request.form.get("version", "")
        if version not in state.models.versions():
            abort(404, f"no version {version!r}")
        if request.form.get("confirm") != "yes":
            flash("Tick the box to confirm the rollback.", "error")
            return redirect(url_for("models"))
        state.models.set_current(version)
        state.follow_current(now_please=True)  # this console's pages show it at once
        flash(f"Current version is now {version}; servers pick it up at their next reload.", "info")
        return redirect(url_for("models"))

    return app


def _filters(args: Any) -> Filters:
    categories = tuple(c for c in args.get("category", "").replace(",", " ").split() if c)
    low, high = args.get("min_price", "").strip(), args.get("max_price", "").strip()
    if not (categories or low or high or args.get("available_only")):
        return NO_FILTERS
    return Filters(
        include_categories=categories,
        available_only=bool(args.get("available_only")),
        min_price=float(low) if low else None,
        max_price=float(high) if high else None,
    )
