"""Log message templates: which kind of message a log line is, for every record, online.

For notebooks and evaluation::

    from farmwatch.analysis import log_templates
    log_templates(["Took 19.05 seconds to spawn", "Took 2.1 seconds to spawn"])
    # ['Took <*> seconds to spawn', 'Took <*> seconds to spawn']

and the pieces the log pipeline uses: a ``TemplateMiner`` per source (``template_of(message)`` →
``Template(id, text)``), ``RecordTemplates`` putting ``log.template.id``/``log.template.text`` into
records and counting them as ``log.template.count`` series, ``TemplateStore`` sharing the miners'
clusters through the store file. How it works and what it measured: ``docs/log-templates.md``.
"""

from farmwatch.logtemplates.miner import VARIABLE, Template, TemplateMiner, template_id
from farmwatch.logtemplates.records import COUNT, ID_FIELD, TEXT_FIELD, RecordTemplates
from farmwatch.logtemplates.store import TemplateInfo, TemplateStore

__all__ = ["COUNT", "ID_FIELD", "TEXT_FIELD", "VARIABLE", "RecordTemplates", "Template", "TemplateInfo",
           "TemplateMiner", "TemplateStore", "log_templates", "template_id"]


def log_templates(messages: list[str]) -> list[str]:
    """One template per message, in input order, by the miner the log pipeline uses (settled:
    every message is learnt first, then each is given its template)."""
    return [t.text for t in TemplateMiner().templates(list(messages))]
