"""Alerting: rules → lifecycle → grouping and muting → outbox → notifiers.

One module per job, as in Alertmanager: ``rules``/``kinds`` (what a rule file says and how each
kind evaluates on the ``farmwatch.store.window.Window``), ``ruleset`` (the rules, inhibitions and
timers of an ``[alerting]`` section), ``lifecycle`` (pending → firing → resolved), ``muting``
(silences, inhibition, acks), ``dispatch`` (groups and their timers), ``state`` (the alert state
and outbox in the store), ``engine`` (one evaluation step of all of it), ``message``/``text`` (chat
messages, untrusted text neutralised), ``delivery``/``notifiers`` (outbox → Rocket.Chat), and
``context`` (lines from other systems for an alert). ``farmwatch.service.assemble`` wires them::

    alerting = build_alerting(load("farmwatch.toml"), store)
    alerting.engine.evaluate(time.time()); alerting.delivery.pump()
"""

__all__: list[str] = []
