"""Log records for the log file alone: what the console shows another way (the live progress bar,
Rich's table of the final metrics) and train.log still needs. Hydra's console handler drops them
(conf/hydra/default.yaml). A module of its own, importing nothing heavy: Hydra loads the filter
as it sets up logging, before any job runs."""

import logging

# `extra=` of such a record
FILE_ONLY = {"file_only": True}


class DropFileOnly(logging.Filter):
    """Leaves out of a handler the records logged with `extra=FILE_ONLY`."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(record, "file_only", False)
