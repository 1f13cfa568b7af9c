/* A small "server" unit for the report tests: one inline helper with several callers, a message, a
 * counter, a limit and a macro. fix.patch edits the helper, the message, the macro and compute();
 * refuse.patch changes the initial value of existing data, which a live patch cannot do. */
#include <stdio.h>

#define RATIO 4

int limit = 10;
static int counter;

int ratio(int v)
{
	return v / RATIO;
}

static inline int scale(int x)
{
	return x * 3 + 1;
}

int alpha(int x)
{
	return scale(x) + 10;
}

int beta(int x)
{
	return scale(x) * scale(x + 1);
}

int delta(const int *p)
{
	return scale(*p) ^ 7;
}

int epsilon(int a, int b)
{
	return scale(a) / (b | 1);
}

void greet(const char *who)
{
	printf("hello, %s\n", who);
}

int compute(int a, int b)
{
	counter++;
	return a + b < limit ? a + b : limit;
}

int same(int a)
{
	return a * 7 + counter;
}
