"""Ticket action: open a ticket (the generic JSON webhook of the ticket channel), e.g. to request storage."""

from __future__ import annotations

from collections.abc import Mapping

from workers.errors import ActionError, NotificationFailed
from workers.incidents.actions.base import ActionContext, ActionResult, ActionSpec, Kind, Param, ParamValue, text
from workers.incidents.notify import Notification, TicketWebhook

PARAMS: Mapping[str, Param] = {
    "title": Param(Kind.TEXT, required=True, templated=True),
    "body": Param(Kind.TEXT, default="", templated=True),
}


def open_ticket(params: Mapping[str, ParamValue], ctx: ActionContext) -> ActionResult:
    """POST a `request` to OPS_TICKET_WEBHOOK_URL; ok when the ticket system accepted it.

    Raises:
        ActionError: the ticket webhook is not configured or refused the request.
    """
    settings = ctx.settings.notify
    if settings.ticket_url is None:
        raise ActionError("OPS_TICKET_WEBHOOK_URL is not set; no ticket can be opened")
    title, body = text(params, "title"), text(params, "body")
    if ctx.dry_run:
        return ActionResult(True, f"would open a ticket: {title}", {"title": title})
    channel = TicketWebhook(
        settings.ticket_url.value, settings.ticket_token.value if settings.ticket_token else None, ctx.timeout_s
    )
    labels = ctx.labels
    note = Notification(
        "request", 0, labels.get("fingerprint", ""), labels.get("alertname", ""), labels.get("severity", ""),
        title, {"body": body, "instance": labels.get("instance", "")},
    )  # fmt: skip
    try:
        receipt = channel.send(note)
    except NotificationFailed as exc:
        raise ActionError(f"ticket not opened: {exc.reason}") from exc
    return ActionResult(True, f"opened a ticket: {title}", {"title": title, "receipt": receipt})


OPEN = ActionSpec(open_ticket, PARAMS, "open a ticket through the ticket webhook")
