"""The book machinery: parameters, runner, pipelines, results, pages, figures."""
