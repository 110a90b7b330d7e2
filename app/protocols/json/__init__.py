"""The JSON text protocol of `/ws/`: message models, codec and AsyncAPI document."""
