"""The scheduler: pure placement decisions (``placement``); the database applies them
atomically (``zeitwork.operator.db.instances``)."""
