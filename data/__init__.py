"""The bundled dataset, shipped inside the installed package as `wmg._data`."""
