"""danlu (丹炉): the furnace in which transformer language models are refined.

Every stage of a model's life is one library function and one `danlu <stage>` command;
see `danlu --help`.
"""

__version__ = "0.1.0"
