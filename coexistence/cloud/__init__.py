"""The cloud ERP's model: pydantic models of its JSON resources (see ``models``)."""
