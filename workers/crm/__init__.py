"""The CRM channel's edge: the Salesforce REST adapter, channel handlers and their state."""
