"""The one exception type of the data pipeline."""


class DatasetError(ValueError):
    """Bad dataset input (missing files, corrupt annotations, impossible settings).

    The message names the file or value and says what was expected, so scripts can print
    ``error: <message>`` and exit without a traceback.
    """
